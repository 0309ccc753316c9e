"""The erase flow: one request, from the registered base model to a verified, registered and
(if it passed) promoted new version with its certificate; and erase-request, the flow run that a
deployment starts for one stored request.

    python -m flows.erase                 # the default request of params.yaml (forget:, erase:)
    unlearn erase --class seven --method subgroup
    erase_request("gdpr-2026-0042")       # what `unlearn submit` starts (flows/dispatch.py)

Needs S3 and MLflow (bash infra/stack.sh start); Prefect itself needs no server for a local run.
Each erase run leaves a table artifact (before/after and every check) and a link artifact to the
certificate's page on the MLflow tracking server.
"""

from __future__ import annotations

import os
import sys

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.runtime import flow_run

import flows  # noqa: F401  (first: a git clone's own src/, see flows/__init__.py)
import clip_unlearn  # noqa: F401  (telemetry off, torchvision patched)
from clip_unlearn.pipeline.config import load_params
from clip_unlearn.pipeline.dispatch import run_claimed
from clip_unlearn.pipeline.request_store import RequestStore, parse_request
from tasks import erase as t


def artifact_key(rid: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return f"erasure-{rid}".lower().replace("_", "-").replace(".", "-")


def _run_name() -> str:
    request = flow_run.parameters.get("request") or {}
    return f"erase-{request.get('id', 'default')}"


@flow(name="erase", flow_run_name=_run_name, log_prints=True)
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
    summary["certificate_url"], summary["certificate_page"] = cert["url"], cert["page"]
    create_table_artifact(key=artifact_key(req.id), table=cert["rows"],
                          description=f"Erasure {req.id}: {req.model} v{base['version']} -> v{summary['version']}, "
                                      f"verdict **{summary['verdict']}**; before/after and every check")
    create_link_artifact(key=f"{artifact_key(req.id)}-certificate", link=cert["page"],
                         link_text=f"certificate of {req.id} ({summary['verdict']})",
                         description=f"Certificate of erasure {req.id}: its page in the MLflow UI. The file itself: "
                                     f"{cert['url']} (MLflow sends it as a download), {cert['html']}")
    return summary


@flow(name="erase-request", flow_run_name="erase-{request_id}", log_prints=True)
def erase_request(request_id: str, params_path: str = "params.yaml") -> dict:
    """One stored request: claim it in S3, keep the claim alive while the erase flow runs (as a
    subflow), record the outcome in the request's log. A request that is not waiting any more
    (another attempt has it, or it is finished) is left alone. The run fails when the request does."""
    print(f"request {request_id}: clip_unlearn from {os.path.dirname(clip_unlearn.__file__)}, in {os.getcwd()}")
    params = load_params(params_path)
    e = params.erase
    store = RequestStore(params.storage)
    out = run_claimed(store, request_id, e.lease_seconds, e.max_attempts,
                      lambda req: erase.with_options(flow_run_name=f"erase-{req.id}-job")(
                          request=req.model_dump(), params_path=params_path), get_run_logger().warning)
    if out is None:
        st = store.state(request_id)
        print(f"request {request_id} is {st['state']} (attempt {st['attempts']}): nothing to do here")
        return {"id": request_id, "state": "skipped", "request_state": st["state"]}
    if out["state"] != "done":
        raise RuntimeError(f"request {request_id}: {out['state']}: {out.get('reason', '')}")
    print(f"request {request_id}: done (v{out['version']})")
    return out


if __name__ == "__main__":
    out = erase(params_path=(sys.argv[1:2] or ["params.yaml"])[0])
    print(out["table"])
