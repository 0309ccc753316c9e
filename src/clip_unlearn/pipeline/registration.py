"""Registering versions in MLflow: an erasure's result with its evidence, and base models.

    reg = register(job, base, unlearned, verification)   # idempotent: one version per request id
    info = register_base(params, "models/reference")       # champion if the model has none yet

Evidence (result, verification) is written to S3 before the registry is touched, so a rerun after a
crash resumes from what was registered instead of erasing twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from mlflow.entities import Metric, Param

from clip_unlearn.core.models import WEIGHTS_FILE, file_sha256
from clip_unlearn.pipeline import model_registry as reg
from clip_unlearn.pipeline import signing, storage
from clip_unlearn.pipeline.config import Params
from clip_unlearn.pipeline.job import Job, clean
from clip_unlearn.pipeline.provenance import code_version, data_versions


def register(job: Job, base: dict, unlearned: dict, verification: dict) -> dict:
    """Register the result as a new version (tags = evidence), alias `candidate`. Idempotent: a
    version already registered for this request id is returned as it is."""
    c, req, p = job.client(), job.request, job.params
    existing = reg.find(c, req.model, request_id=req.id)
    if existing:
        mv = existing[0]
        job.log(f"request {req.id} is already registered as {req.model} v{mv.version}; not registering again")
        return {"version": mv.version, "run_id": mv.run_id, "verdict": mv.tags.get("verdict"), "resumed": True}
    result = json.loads(Path(unlearned["result"]).read_text())
    storage.put_json(job.storage, job.evidence_key("result.json"), clean(result))
    storage.put_json(job.storage, job.evidence_key("verification.json"), clean(verification))
    source, sha = reg.upload_model(job.storage, req.model, unlearned["model_dir"])
    fr = req.forget_request()
    forgotten_all = ";".join(x for x in (base.get("forgotten"), fr.describe()) if x)
    # This version's lineage: the base's, plus this erasure (version None: the version carrying it).
    lineage = [*base.get("lineage", []), {"request_id": req.id, "forgotten": fr.describe(),
                                          "limit": verification.get("forget_limit"), "version": None}]
    b, a = result["before"], result["after"]
    tags = {"request_id": req.id, "requester": req.requester, "method": req.method, "forgotten": fr.describe(),
            "forgotten_all": forgotten_all, "lineage": json.dumps(lineage),
            "verdict": verification["verdict"], "base_version": base["version"],
            "method_chosen": result.get("info", {}).get("chosen", req.method),
            "data_free": str(result.get("data_free")).lower(),
            "base_sha256": base["sha256"], "weights_sha256": sha,
            "data_versions": json.dumps(data_versions(p.data.root, sorted({req.dataset, *p.data.datasets}))),
            "code_version": json.dumps(code_version()), "reason": req.reason[:500]}
    key = signing.load_key()   # a broken key stops the job here, before the version exists
    tags |= signing.registry_tags(key) if key else {}
    for k in ("forget_top1", "retain_top1", "other_top1"):
        tags[f"bf.{k}"], tags[f"af.{k}"] = f"{b[k]:.4f}", f"{a[k]:.4f}"
    exp = c.get_experiment_by_name(p.registry.experiment)
    exp_id = exp.experiment_id if exp else c.create_experiment(p.registry.experiment)
    run = c.create_run(exp_id, run_name=f"erase-{req.id}", tags={"request_id": req.id, "model": req.model})
    now = 0
    metrics = [Metric(f"{when}_{k}", float(v[k]), now, 0) for when, v in (("bf", b), ("af", a))
               for k in ("forget_top1", "retain_top1", "other_top1") if v.get(k) is not None and v[k] == v[k]]
    params = [Param(k, str(v)[:500]) for k, v in {"method": req.method, "dataset": req.dataset,
              "classes": ",".join(req.classes), "where": json.dumps(req.where), "base_version": base["version"],
              **{f"method.{k}": v for k, v in result["config"].items()}}.items()]
    c.log_batch(run.info.run_id, metrics=metrics, params=params)
    c.log_artifact(run.info.run_id, str(job.dir / "verification.json"), "evidence")
    c.log_artifact(run.info.run_id, unlearned["result"], "evidence")
    c.set_terminated(run.info.run_id)
    mv = reg.register(c, req.model, source, run.info.run_id, tags,
                      description=f"{req.method} erasure of {fr.describe()} from v{base['version']} ({req.id})")
    reg.move_alias(c, job.storage, req.model, "candidate", mv.version, why=f"new version from request {req.id}")
    job.log(f"registered {req.model} v{mv.version} (verdict {verification['verdict']})")
    return {"version": mv.version, "run_id": run.info.run_id, "verdict": verification["verdict"], "resumed": False}


def register_base(params: Params, model_dir: str, name: str | None = None, metrics: dict | None = None,
                  log: Callable[[str], None] = print) -> dict:
    """Register a model (the reference, or a user's) as a base version; `champion` if the model
    has none yet. Idempotent: weights already registered return their version."""
    name = name or params.registry.model_name
    c = reg.client(params.registry)
    sha = file_sha256(Path(model_dir) / WEIGHTS_FILE)
    found = reg.find(c, name, weights_sha256=sha)
    if found:
        mv = found[0]
    else:
        source, sha = reg.upload_model(params.storage, name, model_dir)
        tags = {"verdict": "base", "weights_sha256": sha, "forgotten_all": "",
                "data_versions": json.dumps(data_versions(params.data.root, list(params.data.datasets))),
                "code_version": json.dumps(code_version())}
        tags |= {f"zero_shot.{k}": f"{v['top1']:.4f}" for k, v in (metrics or {}).items()}
        mv = reg.register(c, name, source, None, tags, description=f"base model from {model_dir}")
        log(f"registered {name} v{mv.version} (base, weights {sha[:12]})")
    if "champion" not in reg.aliases(c, name):
        reg.move_alias(c, params.storage, name, "champion", mv.version, why="first registered base model",
                       expect=None)
    return {"name": name, "version": mv.version, "sha256": sha, "aliases": reg.aliases(c, name)}
