"""The erase flow: one request, from the registered base model to a verified, registered and
(if it passed) promoted new version with its certificate.

    python -m flows.erase                 # the default request of params.yaml (forget:, erase:)
    unlearn erase --class seven --method subgroup

Needs S3 and MLflow (bash infra/stack.sh start); Prefect itself needs no server for a local run.
"""

from __future__ import annotations

import sys

from prefect import flow
from prefect.artifacts import create_markdown_artifact

import clip_unlearn  # noqa: F401  (telemetry off, torchvision patched)
from clip_unlearn.pipeline.config import load_params
from clip_unlearn.pipeline.request_store import parse_request
from tasks import erase as t


@flow(name="erase", log_prints=True)
def erase(request: dict | None = None, params_path: str = "params.yaml") -> dict:
    params = load_params(params_path)
    req = parse_request(request) if request else params.default_request()
    resumed = t.resume(params, req)
    if resumed:
        base, registered = resumed
        print(f"request {req.id} was registered as v{registered['version']} by an earlier attempt; resuming")
    else:
        base = t.fetch_base(params, req)
        t.prepare_data(params, req)
        syn = t.synthesize(params, req, base["model_dir"], base["sha256"])
        out = t.unlearn(params, req, base["model_dir"], syn, base["lineage"])
        ver = t.verify(params, req, base["model_dir"], out["model_dir"], out["result"], base["lineage"])
        registered = t.register(params, req, base, out, ver)
    cert = t.certify(params, req, base, registered)
    promoted = t.promote(params, req, base, registered)
    summary = {"request_id": req.id, "model": req.model, "version": registered["version"],
               "base_version": base["version"], "verdict": registered["verdict"],
               "promoted": promoted["promoted"], "certificate": cert["uri"], "certificate_html": cert["html"],
               "certificate_local": cert["local"], "resumed": bool(resumed)}
    summary["failed_checks"], summary["table"] = cert["failed"], cert["table"]
    summary |= {k: cert.get(k) for k in ("method", "attempts", "lineage")}
    create_markdown_artifact(key=f"erasure-{req.id}".lower().replace("_", "-").replace(".", "-"),
                             markdown=f"verdict **{summary['verdict']}**, {req.model} v{summary['version']}\n\n"
                                      f"```\n{summary['table']}\n```\ncertificate: {cert['html']}",
                             description=f"Erasure {req.id}")
    return summary


if __name__ == "__main__":
    out = erase(params_path=(sys.argv[1:2] or ["params.yaml"])[0])
    print(out["table"])
