"""The erasure job as DVC stages (dvc.yaml: synthesize -> unlearn -> verify -> register), on the
reference model of the earlier stages and the default request of params.yaml. The certificate
is written to pipeline/certificate/ and S3 (not a DVC output: S3 and MLflow hold it).

    unlearn stage synthesize|unlearn|verify|register      # what dvc.yaml runs

Files live in pipeline/ (DVC outputs); `register` needs the stack (S3 + MLflow), registers the
reference as the base if it is not yet, registers the result (request id derived from everything
it depends on, so an unchanged rerun registers nothing new), promotes it if it passed and the
champion is still the base, and writes metrics/erasure.json.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from clip_unlearn.core.models import WEIGHTS_FILE, file_sha256
from clip_unlearn.pipeline import steps
from clip_unlearn.pipeline.config import Params
from clip_unlearn.pipeline.registration import register_base

DIR = Path("pipeline")
METRICS = Path("metrics/erasure.json")
PLOT = Path("reports/erasure_per_class.json")


def _job(params: Params) -> steps.Job:
    DIR.mkdir(parents=True, exist_ok=True)
    return steps.Job(params, params.default_request(), DIR)


def _base_sha(params: Params) -> str:
    return file_sha256(Path(params.model.dir) / WEIGHTS_FILE)


def synthesize(params: Params) -> None:
    job, out = _job(params), DIR / "synthetic"
    made = steps.synthesize(job, params.model.dir, _base_sha(params))
    if out.exists():
        shutil.rmtree(out)
    if made:
        shutil.copytree(made, out)
    else:
        out.mkdir()
        (out / "NONE").write_text(f"method {params.forget.method} needs no synthetic set\n")


def unlearn(params: Params) -> None:
    syn = DIR / "synthetic"
    steps.unlearn(_job(params), params.model.dir, str(syn) if (syn / "summary.json").is_file() else None)


def verify(params: Params) -> None:
    steps.verify(_job(params), params.model.dir, str(DIR / "model"), str(DIR / "result.json"))


def register(params: Params) -> dict:
    job = _job(params)
    base_info = register_base(params, params.model.dir)
    ver = json.loads((DIR / "verification.json").read_text())
    result = json.loads((DIR / "result.json").read_text())
    new_sha = file_sha256(DIR / "model" / WEIGHTS_FILE)
    evidence = hashlib.sha256((DIR / "verification.json").read_bytes()).hexdigest()
    rid = "dvc-" + hashlib.sha256(f"{base_info['sha256']}:{new_sha}:{evidence}".encode()).hexdigest()[:16]
    job.request = job.request.model_copy(update={"id": rid, "base": base_info["version"],
                                                 "reason": "dvc repro of params.yaml"})
    c = job.client()
    mv = c.get_model_version(base_info["name"], base_info["version"])
    base = {"name": mv.name, "version": mv.version, "source": mv.source, "sha256": mv.tags["weights_sha256"],
            "forgotten": mv.tags.get("forgotten_all", "")}
    registered = steps.register(job, base, {"model_dir": str(DIR / "model"), "result": str(DIR / "result.json")}, ver)
    cert = steps.certify(job, base, registered)
    promoted = steps.promote(job, base, registered)
    metrics = {"passed": ver["verdict"] == "passed", "model": base_info["name"], "version": int(registered["version"]),
               "base_version": int(base["version"]), "promoted": promoted["promoted"], "request_id": rid,
               "method": job.request.method, "forgotten": job.request.forget_request().describe(),
               "before": {k: round(result["before"][k], 4) for k in ("forget_top1", "retain_top1", "other_top1")},
               "after": {k: round(result["after"][k], 4) for k in ("forget_top1", "retain_top1", "other_top1")},
               "certificate": cert["uri"]}
    METRICS.parent.mkdir(parents=True, exist_ok=True)
    METRICS.write_text(json.dumps(metrics, indent=1) + "\n")
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"class": k, "before": result["before"]["per_class"][k], "after": result["after"]["per_class"].get(k)}
            for k in result["before"]["per_class"]]
    PLOT.write_text(json.dumps(rows, indent=1) + "\n")
    return metrics


STAGES = {"synthesize": synthesize, "unlearn": unlearn, "verify": verify, "register": register}
