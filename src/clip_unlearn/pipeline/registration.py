"""Registering versions in MLflow: each one an MLflow model (pipeline/mlflow_model.py) logged from a
run that a person can read: params, before/after and every check as metrics (real timestamps), the
datasets as inputs with their DVC md5 as digest, the git commit as source tags.

    reg = register(job, base, unlearned, verification)   # idempotent: one version per request id
    info = register_base(params, "models/reference")       # a run and v1; champion if there is none

Evidence (result, verification) is written to S3 before the registry is touched, so a rerun after a
crash resumes from what was registered instead of erasing twice.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Callable

from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource, S3ArtifactDatasetSource
from mlflow.entities import DatasetInput, InputTag, Metric, Param
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from clip_unlearn.core.models import WEIGHTS_FILE, file_sha256
from clip_unlearn.pipeline import model_registry as reg
from clip_unlearn.pipeline import signing, storage
from clip_unlearn.pipeline.config import Params
from clip_unlearn.pipeline.job import Job, clean
from clip_unlearn.pipeline.mlflow_model import log_clip_model
from clip_unlearn.pipeline.provenance import code_version, data_versions, dvc_object_uri, git_source_tags

SUMMARY = ("forget_top1", "retain_top1", "other_top1", "subgroup_rest_top1", "other_classes_top1")


def _metric_key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. /]", ".", text)   # MLflow's allowed characters (a check "lineage:id")


def check_metrics(checks: list[dict]) -> dict[str, float]:
    """Each check as check.<name>.value / .limit / .held (1 or 0), and check.all.held."""
    out = {}
    for c in checks:
        key = f"check.{_metric_key(c['name'])}"
        if c.get("value") is not None:
            out[f"{key}.value"] = float(c["value"])
        if c.get("limit") is not None:
            out[f"{key}.limit"] = float(c["limit"])
        out[f"{key}.held"] = float(bool(c["passed"]))
    out["check.all.held"] = float(all(c["passed"] for c in checks))
    return out


def _datasets(versions: dict, root: str, context: str) -> list[DatasetInput]:
    """The data versions as MLflow dataset inputs: digest = DVC's md5 (else the files' sha256, cut to
    MLflow's 36 characters), source = DVC's remote object when there is one, else the local folder."""
    out = []
    for name, v in versions.items():
        uri = dvc_object_uri(v.get("dvc_md5"))
        source = S3ArtifactDatasetSource(uri) if uri and uri.startswith("s3://") else \
            LocalArtifactDatasetSource(uri or str((Path(root) / name).resolve()))
        ds = MetaDataset(source, name=name, digest=(v.get("dvc_md5") or v["files_sha256"])[:36])
        out.append(DatasetInput(ds._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    return out


def _run(c, params: Params, name: str, tags: dict, entry_point: str, run_params: dict, metrics: dict[str, float],
         versions: dict, artifacts: list[tuple[str, str]] = ()):
    exp = c.get_experiment_by_name(params.registry.experiment)
    exp_id = exp.experiment_id if exp else c.create_experiment(params.registry.experiment)
    run = c.create_run(exp_id, run_name=name, tags=tags | git_source_tags(entry_point))
    now = int(time.time() * 1000)
    c.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items() if v == v],
                params=[Param(k, str(v)[:500]) for k, v in run_params.items()])
    c.log_inputs(run.info.run_id, datasets=_datasets(versions, params.data.root, "train"))
    for path, folder in artifacts:
        c.log_artifact(run.info.run_id, path, folder)
    return run


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
    sha = file_sha256(Path(unlearned["model_dir"]) / WEIGHTS_FILE)
    fr = req.forget_request()
    forgotten_all = ";".join(x for x in (base.get("forgotten"), fr.describe()) if x)
    # This version's lineage: the base's, plus this erasure (version None: the version carrying it).
    lineage = [*base.get("lineage", []), {"request_id": req.id, "forgotten": fr.describe(),
                                          "limit": verification.get("forget_limit"), "version": None}]
    b, a = result["before"], result["after"]
    versions = data_versions(p.data.root, sorted({req.dataset, *p.data.datasets}))
    tags = {"request_id": req.id, "requester": req.requester, "method": req.method, "forgotten": fr.describe(),
            "forgotten_all": forgotten_all, "lineage": json.dumps(lineage),
            "verdict": verification["verdict"], "base_version": base["version"],
            "method_chosen": result.get("info", {}).get("chosen", req.method),
            "data_free": str(result.get("data_free")).lower(),
            "base_sha256": base["sha256"], "weights_sha256": sha,
            "data_versions": json.dumps(versions), "code_version": json.dumps(code_version()),
            "reason": req.reason[:500]}
    key = signing.load_key()   # a broken key stops the job here, before the version exists
    tags |= signing.registry_tags(key) if key else {}
    for k in ("forget_top1", "retain_top1", "other_top1"):
        tags[f"bf.{k}"], tags[f"af.{k}"] = f"{b[k]:.4f}", f"{a[k]:.4f}"
    metrics = {f"{when}_{k}": float(v[k]) for when, v in (("bf", b), ("af", a)) for k in SUMMARY
               if v.get(k) is not None} | check_metrics(verification["checks"])
    run_params = {"method": req.method, "method_chosen": tags["method_chosen"], "dataset": req.dataset,
                  "classes": ",".join(req.classes), "where": json.dumps(req.where), "base_version": base["version"],
                  "request_id": req.id, **{f"method.{k}": v for k, v in result["config"].items()}}
    run = _run(c, p, f"erase-{req.id}", {"request_id": req.id, "model": req.model, "verdict": verification["verdict"]},
               "clip_unlearn.pipeline.steps:register", run_params, metrics, versions,
               [(str(job.dir / "verification.json"), "evidence"), (unlearned["result"], "evidence")])
    try:
        logged = log_clip_model(c, run.info.run_id, unlearned["model_dir"], tags={"request_id": req.id})
        mv = reg.register(c, req.model, logged, tags,
                          description=f"{req.method} erasure of {fr.describe()} from v{base['version']} ({req.id})")
    finally:
        c.set_terminated(run.info.run_id)
    reg.move_alias(c, job.storage, req.model, "candidate", mv.version, why=f"new version from request {req.id}")
    job.log(f"registered {req.model} v{mv.version} (verdict {verification['verdict']})")
    return {"version": mv.version, "run_id": run.info.run_id, "verdict": verification["verdict"], "resumed": False}


def register_base(params: Params, model_dir: str, name: str | None = None, metrics: dict | None = None,
                  log: Callable[[str], None] = print) -> dict:
    """Register a model (the reference, or a user's) as a base version, from a run of its own;
    `champion` if the model has none yet. Idempotent: weights already registered return their version."""
    name = name or params.registry.model_name
    c = reg.client(params.registry)
    sha = file_sha256(Path(model_dir) / WEIGHTS_FILE)
    found = reg.find(c, name, weights_sha256=sha)
    if found:
        mv = found[0]
    else:
        versions = data_versions(params.data.root, list(params.data.datasets))
        tags = {"verdict": "base", "weights_sha256": sha, "forgotten_all": "",
                "data_versions": json.dumps(versions), "code_version": json.dumps(code_version())}
        tags |= {f"zero_shot.{k}": f"{v['top1']:.4f}" for k, v in (metrics or {}).items()}
        run = _run(c, params, f"base-{name}", {"model": name, "verdict": "base"},
                   "clip_unlearn.pipeline.registration:register_base",
                   {"model_dir": model_dir, "weights_sha256": sha, "arch": params.model.arch,
                    **{f"bootstrap.{k}": v for k, v in params.bootstrap.model_dump().items()}},
                   {f"zero_shot.{k}.top1": float(v["top1"]) for k, v in (metrics or {}).items()}, versions)
        try:
            mv = reg.register(c, name, log_clip_model(c, run.info.run_id, model_dir, tags={"base": "true"}), tags,
                              description=f"base model from {model_dir}")
        finally:
            c.set_terminated(run.info.run_id)
        log(f"registered {name} v{mv.version} (base, weights {sha[:12]})")
    if "champion" not in reg.aliases(c, name):
        reg.move_alias(c, params.storage, name, "champion", mv.version, why="first registered base model",
                       expect=None)
    return {"name": name, "version": mv.version, "sha256": sha, "aliases": reg.aliases(c, name)}
