"""The steps of one erasure job, as plain functions on params, paths and URIs (no Prefect).

    job = Job.create(params, request)            # job folder runs/erase/<request id>/ (pipeline/job.py)
    base = fetch_base(job)                       # registry alias/version -> local folder, hash checked
    data_root = prepare_data(job)
    syn = synthesize(job, base["model_dir"])     # None for methods that need no synthetic set
    out = unlearn(job, base["model_dir"], syn)   # {"model_dir", "result"}
    ver = verify(job, base["model_dir"], out["model_dir"], out["result"])
    reg = register(job, base, out, ver)          # idempotent: one version per request id (registration.py)
    cert = certify(job, base, reg)               # JSON + HTML + PNG, in S3 and on the MLflow run
    promote(job, base, reg)                      # champion moves only if the verdict passed

flows/erase.py runs them as Prefect tasks; `unlearn erase` and the DVC stages call the same code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from clip_unlearn.core.assurance import probe_check
from clip_unlearn.core.data import BUILTIN_DATASETS
from clip_unlearn.core.gate import failed_reasons, forget_limit
from clip_unlearn.core.models import changed_parts, load_model, save_model
from clip_unlearn.core.schema import ConfigError
from clip_unlearn.methods.synthetic import load_synthetic, make_synthetic_set, save_synthetic
from clip_unlearn.pipeline import model_registry as reg
from clip_unlearn.pipeline import signing, storage
from clip_unlearn.pipeline.certificate import format_table, table_rows, write_certificate
from clip_unlearn.pipeline.config import Params
from clip_unlearn.pipeline.eventlog import utcnow
from clip_unlearn.pipeline.job import Job, clean, earlier, lineage_of, method_record, write_json
from clip_unlearn.pipeline.oracles import yardstick
from clip_unlearn.pipeline.reference import dataset_is_current, make_dataset
from clip_unlearn.pipeline.registration import register
from clip_unlearn.pipeline.unlearn import gate_in_force, judge
from clip_unlearn.pipeline.unlearn import unlearn as run_unlearn

__all__ = ["Job", "certify", "fetch_base", "prepare_data", "promote", "register", "resume", "synthesize",
           "unlearn", "verify"]


def fetch_base(job: Job) -> dict:
    c = job.client()
    mv = reg.resolve(c, job.request.model, job.request.base)
    folder = reg.fetch(mv, job.storage, job.dir / "base", reg.tracking_uri(job.params.registry))
    return {"name": mv.name, "version": mv.version, "source": mv.source, "model_dir": str(folder),
            "sha256": mv.tags["weights_sha256"], "forgotten": mv.tags.get("forgotten_all", ""),
            "lineage": lineage_of(mv)}


def prepare_data(job: Job) -> str:
    p = job.params
    for name in {job.request.dataset, *p.data.datasets}:
        if name in BUILTIN_DATASETS:
            if not dataset_is_current(p, name):
                make_dataset(p, name)
        elif not (Path(p.data.root) / name.split(":")[0]).exists():
            raise FileNotFoundError(f"dataset {name!r} not found under {p.data.root}; put it there first "
                                    "(docs/bootstrap.md lists the loaders)")
    return p.data.root


def uses_synthetic(method: str, params: Params) -> bool:
    return hasattr(params.methods.get(method), "synthesis")


def synthesize(job: Job, base_dir: str, base_sha: str) -> str | None:
    """Synthetic forget images by model inversion, for the methods that train on them. Kept in
    <workdir>/synthetic/<key> and in S3 under synthetic/<key> (key: base weights + classes +
    config), and reused from either."""
    p, req = job.params, job.request
    if not uses_synthetic(req.method, p):
        return None
    out = synthetic_dir(job, base_sha)
    key = storage.safe_key("synthetic", out.name)
    if (out / "summary.json").is_file():
        job.log(f"reusing the synthetic set in {out}")
        return str(out)
    if storage.exists(job.storage, f"{key}/summary.json"):
        storage.download_dir(job.storage, key, out)
        job.log(f"reusing the synthetic set {storage.uri(job.storage, key)}")
        return str(out)
    bundle = load_model(base_dir, device=p.bootstrap.device)
    syn = make_synthetic_set(bundle, req.forget_request(), p.data.root, p.methods[req.method].synthesis,
                             seed=p.benchmark.seed, log=job.log)
    save_synthetic(syn, out, bundle.mean, bundle.std)
    storage.upload_dir(job.storage, out, key)   # kept with the other artifacts, reused by any worker
    return str(out)


def unlearn(job: Job, base_dir: str, synthetic_dir: str | None, lineage: list[dict] = ()) -> dict:
    p, req = job.params, job.request
    bundle = load_model(base_dir, device=p.bootstrap.device)
    synthetic = None
    if synthetic_dir:
        syn = load_synthetic(synthetic_dir)
        synthetic = lambda: (syn.x, syn.labels)  # noqa: E731
    cfg = p.methods.get(req.method)
    if req.method == "auto" and req.allow_forgotten_data is not None:
        cfg = cfg.model_copy(update={"allow_forgotten_data": req.allow_forgotten_data})
    result = run_unlearn(p, bundle, req.forget_request(), req.method, lineage=earlier(list(lineage)),
                         thresholds=req.thresholds, config=cfg, synthetic=synthetic, log=job.log)
    out = save_model(bundle, job.dir / "model", meta={"unlearning": {
        "request_id": req.id, "method": req.method, "forgotten": req.forget_request().describe()}})
    return {"model_dir": str(out), "result": str(write_json(job.dir / "result.json", result))}


def verify(job: Job, base_dir: str, model_dir: str, result_path: str, lineage: list[dict] = ()) -> dict:
    """The gate on the saved weights (test split): accuracy, every earlier erasure of the lineage
    against its own limit, the relearning check (always run, for its curve), and the linear probe
    (informational unless assurance.probe_gate)."""
    p, req = job.params, job.request
    result = json.loads(Path(result_path).read_text())
    th = gate_in_force(p, req.thresholds)
    dev = p.bootstrap.device
    base, new_model = load_model(base_dir, device=dev), load_model(model_dir, device=dev)
    out_dir = job.dir / "assurance"
    out_dir.mkdir(parents=True, exist_ok=True)
    judged = judge(p, new_model, result, lineage=earlier(list(lineage)), thresholds=req.thresholds, remeasure=True,
                   measure_all=True, figure_path=out_dir / "relearn.png", base=base)
    checks = judged["checks"]
    if p.assurance.enabled:
        probe = judged["probe"] or probe_check(base, new_model, req.forget_request(), p.data.root, p.assurance,
                                               out_dir / "probe.png", [e.request for e in earlier(list(lineage))])
        assurance = {"relearn": judged["relearn"], "probe": probe, "depth": judged["depth"]}
    else:
        skipped = {"skipped": True, "reason": "assurance.enabled is false"}
        assurance = {"relearn": dict(skipped), "probe": dict(skipped), "depth": dict(skipped)}
    measured = judged["after"].get("lineage", {})
    lineage_now = [{**e, "value": measured.get(e["forgotten"])} for e in lineage]
    out = {"verdict": "passed" if judged["passed"] else "failed", "checks": checks, "thresholds": th.model_dump(),
           "lineage": lineage_now, "forget_limit": forget_limit(th, bool(req.where)),
           "failed": failed_reasons(checks), "assurance": assurance,
           "changed": changed_parts(base.model, new_model.model)}
    write_json(job.dir / "verification.json", out)
    return out


def certify(job: Job, base: dict, registered: dict) -> dict:
    """The erasure certificate: JSON + HTML + per-class PNG, to S3 and to the version's MLflow run."""
    c, req = job.client(), job.request
    mv = c.get_model_version(req.model, registered["version"])
    result = storage.get_json(job.storage, job.evidence_key("result.json"))
    ver = storage.get_json(job.storage, job.evidence_key("verification.json"))
    record = {"request": req.model_dump(),
              "model": {"name": req.model, "version": mv.version, "base_version": base["version"],
                        "base_sha256": base["sha256"], "new_sha256": mv.tags["weights_sha256"],
                        "uri": f"models:/{req.model}/{mv.version}", "source": mv.source},
              "method": method_record(req.method, result),
              "before": result["before"], "after": result["after"], "thresholds": ver["thresholds"],
              "checks": ver["checks"], "lineage": ver.get("lineage", []), "verdict": ver["verdict"], "assurance": ver["assurance"],
              "changed": ver.get("changed"),
              "yardstick": None if base.get("lineage") else yardstick(job.params, base["sha256"], req.forget_request()),
              "data_versions": json.loads(mv.tags.get("data_versions", "{}")),
              "code_version": json.loads(mv.tags.get("code_version", "{}")),
              "created_at": utcnow()}
    key = signing.load_key()   # None: no CLIP_UNLEARN_SIGNING_KEY; the certificate says "unsigned"
    files = write_certificate(clean(record), job.dir / "certificate", key=key)
    if key is None:
        job.log(f"certificate of {req.id} is UNSIGNED: set {signing.ENV} to an Ed25519 key (PEM file) to sign it")
    else:
        job.log(f"certificate of {req.id} signed with key {signing.key_id(key)} ({signing.publish(job.storage, key)})")
        for k, v in signing.registry_tags(key).items():   # set by register(); a resumed job may lack them
            if mv.tags.get(k) != v:
                c.set_model_version_tag(req.model, mv.version, k, v)
    prefix = storage.safe_key("certificates", req.id)
    storage.upload_dir(job.storage, job.dir / "certificate", prefix)
    c.log_artifacts(registered["run_id"], str(job.dir / "certificate"), "certificate")
    uri = storage.uri(job.storage, f"{prefix}/certificate.json")
    url = reg.artifact_url(job.params.registry, registered["run_id"], "certificate/certificate.html")
    page = reg.artifact_page_url(job.params.registry, c.get_run(registered["run_id"]).info.experiment_id,
                                 registered["run_id"], "certificate/certificate.html")
    c.set_model_version_tag(req.model, mv.version, "certificate", uri)
    c.set_model_version_tag(req.model, mv.version, "certificate_url", url)
    return {"uri": uri, "html": storage.uri(job.storage, f"{prefix}/certificate.html"), "url": url, "page": page,
            "local": str(files["html"]), "verdict": ver["verdict"], "failed": ver["failed"],
            "table": format_table(result["before"], result["after"]),
            "rows": table_rows(result["before"], result["after"], ver["checks"]),
            "method": {k: record["method"][k] for k in ("name", "chosen", "kind")},
            "attempts": record["method"]["attempts"], "lineage": record["lineage"]}


def promote(job: Job, base: dict, registered: dict) -> dict:
    """Move `champion` to the new version only if its verification passed and champion is still
    the version the job started from (another request may have moved it meanwhile)."""
    c, req = job.client(), job.request
    if registered["verdict"] != "passed":
        return {"promoted": False, "why": "verification failed; left as candidate"}
    champion = reg.aliases(c, req.model).get("champion")
    if champion == registered["version"]:
        return {"promoted": True, "why": "already champion"}
    if champion is not None and champion != base["version"]:
        # Promoting would drop whatever v{champion} erased since the base: leave it to a person.
        return {"promoted": False, "why": f"champion is v{champion}, not the base v{base['version']} this "
                                          "version was made from; left as candidate"}
    reg.move_alias(c, job.storage, req.model, "champion", registered["version"],
                   why=f"request {req.id} passed verification", expect=champion)
    return {"promoted": True, "why": f"request {req.id} passed verification"}


def resume(job: Job) -> tuple[dict, dict] | None:
    """If this request was registered by an earlier attempt (which then crashed), its base and
    registration, so the job goes on from there instead of erasing twice."""
    c, req = job.client(), job.request
    found = reg.find(c, req.model, request_id=req.id)
    if not found:
        return None
    mv = found[0]
    done_as = (mv.tags.get("forgotten"), mv.tags.get("method"))
    if done_as != (req.forget_request().describe(), req.method):
        raise ConfigError(f"request id {req.id!r} was already used for a different erasure ({req.model} "
                          f"v{mv.version}: {done_as[1]} on {done_as[0]}); give this one a new id "
                          "(--id, or erase.request_id in params.yaml)")
    base_mv = c.get_model_version(req.model, mv.tags["base_version"])
    base = {"name": req.model, "version": base_mv.version, "source": base_mv.source,
            "sha256": base_mv.tags.get("weights_sha256"), "forgotten": base_mv.tags.get("forgotten_all", ""),
            "lineage": lineage_of(base_mv)}
    return base, {"version": mv.version, "run_id": mv.run_id, "verdict": mv.tags.get("verdict"), "resumed": True}


def synthetic_key(job: Job, base_sha: str) -> str:
    """What a synthetic set depends on: the base weights, the request's classes, the synthesis config."""
    cfg = getattr(job.params.methods.get(job.request.method), "synthesis", None)
    blob = json.dumps([base_sha, job.request.dataset, job.request.classes, cfg and cfg.model_dump(),
                       job.params.benchmark.seed], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def synthetic_dir(job: Job, base_sha: str) -> Path:
    return Path(job.params.erase.workdir) / "synthetic" / synthetic_key(job, base_sha)
