"""The steps of one erasure job, as plain functions on params, paths and URIs (no Prefect).

    job = Job.create(params, request)            # job folder runs/erase/<request id>/
    base = fetch_base(job)                       # registry alias/version -> local folder, hash checked
    data_root = prepare_data(job)
    syn = synthesize(job, base["model_dir"])     # None for methods that need no synthetic set
    out = unlearn(job, base["model_dir"], syn)   # {"model_dir", "result"}
    ver = verify(job, base["model_dir"], out["model_dir"], out["result"])
    reg = register(job, base, out, ver)          # idempotent: one version per request id
    cert = certify(job, base, reg)               # JSON + HTML + PNG, in S3 and on the MLflow run
    promote(job, base, reg)                      # champion moves only if the verdict passed

flows/erase.py runs them as Prefect tasks; `unlearn erase` and the DVC stages call the same code.
Evidence is written to S3 before the registry is touched, so a rerun after a crash resumes from
what was registered instead of erasing twice.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from clip_unlearn import signing, storage
from clip_unlearn.config import Params
from clip_unlearn.erasure import registry as reg
from clip_unlearn.erasure.eventlog import utcnow
from clip_unlearn.erasure.provenance import code_version, data_versions
from clip_unlearn.erasure.requests import ErasureRequest
from clip_unlearn.erasure.verify import failed_reasons, forget_limit, lineage_checks, run_checks, thresholds


@dataclass
class Job:
    params: Params
    request: ErasureRequest
    dir: Path
    log: Callable[[str], None] = print

    @classmethod
    def create(cls, params: Params, request: ErasureRequest, log: Callable[[str], None] = print) -> "Job":
        folder = Path(params.erase.workdir) / storage.safe_key(request.id)
        folder.mkdir(parents=True, exist_ok=True)
        return cls(params, request, folder, log)

    @property
    def storage(self):
        return self.params.storage

    def client(self):
        return reg.client(self.params.registry)

    def evidence_key(self, name: str) -> str:
        return storage.safe_key("requests", self.request.id, "evidence", name)

    def others(self) -> list[str]:
        return [d for d in self.params.data.datasets if d != self.request.dataset]


def _clean(obj):
    """JSON-ready: NaN -> None (JSON has no NaN)."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _write(path: Path, obj) -> Path:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(obj), indent=1, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
    return path


def fetch_base(job: Job) -> dict:
    c = job.client()
    mv = reg.resolve(c, job.request.model, job.request.base)
    folder = reg.fetch(mv, job.storage, job.dir / "base")
    return {"name": mv.name, "version": mv.version, "source": mv.source, "model_dir": str(folder),
            "sha256": mv.tags["weights_sha256"], "forgotten": mv.tags.get("forgotten_all", ""),
            "lineage": lineage_of(mv)}


def lineage_of(mv) -> list[dict]:
    """What a registered version has forgotten, oldest first: [{"request_id", "forgotten" (a
    ForgetRequest.describe()), "limit" (the forget top-1 it was verified at), "version" (the version
    that made it)}]. Read from the version's `lineage` tag; older versions only have `forgotten_all`."""
    from clip_unlearn.erasure.verify import Thresholds, forget_limit
    from clip_unlearn.unlearning.request import ForgetRequest

    if mv.tags.get("lineage"):
        entries = json.loads(mv.tags["lineage"])
    else:
        entries = [{"request_id": "(unrecorded)", "forgotten": f, "version": None,
                    "limit": forget_limit(Thresholds(), bool(ForgetRequest.parse(f).where))}
                   for f in mv.tags.get("forgotten_all", "").split(";") if f]
    return [{**e, "version": e.get("version") or str(mv.version)} for e in entries]


def lineage_requests(lineage: list[dict]):
    from clip_unlearn.unlearning.request import ForgetRequest

    return [ForgetRequest.parse(e["forgotten"]) for e in lineage]


def prepare_data(job: Job) -> str:
    from clip_unlearn.config import BUILTIN
    from clip_unlearn.reference import dataset_is_current, make_dataset

    p = job.params
    for name in {job.request.dataset, *p.data.datasets}:
        if name in BUILTIN:
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
    from clip_unlearn.models import load_model
    from clip_unlearn.unlearning.context import UnlearnContext
    from clip_unlearn.unlearning.synthesize import save_synthetic
    from clip_unlearn.unlearning.synthesize import synthesize as make

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
    ctx = UnlearnContext(req.forget_request(), p.data.root, data_free=True)
    syn = make(bundle, ctx.classes, ctx.forget_labels, req.dataset, p.methods[req.method].synthesis,
               seed=p.benchmark.seed, log=job.log)
    save_synthetic(syn, out, bundle.mean, bundle.std)
    storage.upload_dir(job.storage, out, key)   # kept with the other artifacts, reused by any worker
    return str(out)


def unlearn(job: Job, base_dir: str, synthetic_dir: str | None, lineage: list[dict] = ()) -> dict:
    from clip_unlearn.models import load_model, save_model
    from clip_unlearn.unlearning.runner import run_method
    from clip_unlearn.unlearning.synthesize import load_synthetic

    p, req = job.params, job.request
    bundle = load_model(base_dir, device=p.bootstrap.device)
    synthetic = None
    if synthetic_dir:
        syn = load_synthetic(synthetic_dir)
        synthetic = lambda: (syn.x, syn.labels)  # noqa: E731
    cfg = p.methods.get(req.method)
    if req.method == "auto" and req.allow_forgotten_data is not None:
        cfg = cfg.model_copy(update={"allow_forgotten_data": req.allow_forgotten_data})
    result = run_method(bundle, req.forget_request(), req.method, cfg, p.data.root,
                        job.others(), seed=p.benchmark.seed, synthetic=synthetic, log=job.log,
                        lineage=lineage_requests(lineage), configs=p.methods,
                        thresholds=thresholds(p.verify, req.thresholds).model_dump(), assurance=p.assurance,
                        lineage_limits={e["forgotten"]: e["limit"] for e in lineage if e.get("limit") is not None})
    out = save_model(bundle, job.dir / "model", meta={"unlearning": {
        "request_id": req.id, "method": req.method, "forgotten": req.forget_request().describe()}})
    return {"model_dir": str(out), "result": str(_write(job.dir / "result.json", result))}


def verify(job: Job, base_dir: str, model_dir: str, result_path: str, lineage: list[dict] = ()) -> dict:
    """Threshold checks on BF/AF, every earlier erasure of the lineage re-checked against its own
    limit, plus the assurance checks (relearning, linear probe)."""
    from clip_unlearn.models import load_model
    from clip_unlearn.unlearning.assurance import run_assurance
    from clip_unlearn.unlearning.evaluate import lineage_top1

    p, req = job.params, job.request
    result = json.loads(Path(result_path).read_text())
    th = thresholds(p.verify, req.thresholds)
    checks = run_checks(result["before"], result["after"], th, bool(req.where))
    # Every earlier erasure, measured here on the new weights (not taken from the unlearn step's report).
    new_model = load_model(model_dir, device=p.bootstrap.device)
    measured = lineage_top1(new_model, lineage_requests(lineage), p.data.root)
    checks += lineage_checks({"lineage": measured}, list(lineage))
    assurance_cfg = p.assurance
    if th.relearn_forget_max is not None:
        assurance_cfg = assurance_cfg.model_copy(update={"relearn_forget_max": th.relearn_forget_max})
    dev = p.bootstrap.device
    assurance = run_assurance(load_model(base_dir, device=dev), new_model,
                              req.forget_request(), p.data.root, assurance_cfg, job.dir / "assurance",
                              lineage=lineage_requests(lineage))
    if assurance.get("relearn", {}).get("passed") is not None:
        checks.append({"name": "relearn_forget_top1", "rule": f"max <= {assurance_cfg.relearn_forget_max}",
                       "value": assurance["relearn"]["forget_top1_max"],
                       "limit": assurance_cfg.relearn_forget_max, "passed": assurance["relearn"]["passed"]})
    if assurance_cfg.probe_gate and assurance.get("probe", {}).get("passed") is not None:
        checks.append({"name": "probe", "rule": "forgotten images no more separable than allowed",
                       "value": assurance["probe"]["new_balanced_accuracy"], "limit": None,
                       "passed": assurance["probe"]["passed"]})
    passed = all(c["passed"] for c in checks)
    lineage_now = [{**e, "value": measured.get(e["forgotten"])} for e in lineage]
    out = {"verdict": "passed" if passed else "failed", "checks": checks, "thresholds": th.model_dump(),
           "lineage": lineage_now, "forget_limit": forget_limit(th, bool(req.where)),
           "failed": failed_reasons(checks), "assurance": assurance}
    _write(job.dir / "verification.json", out)
    return out


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
    storage.put_json(job.storage, job.evidence_key("result.json"), _clean(result))
    storage.put_json(job.storage, job.evidence_key("verification.json"), _clean(verification))
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
    from mlflow.entities import Metric, Param

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


def certify(job: Job, base: dict, registered: dict) -> dict:
    """The erasure certificate: JSON + HTML + per-class PNG, to S3 and to the version's MLflow run."""
    from clip_unlearn.certificate import format_table, write_certificate

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
              "data_versions": json.loads(mv.tags.get("data_versions", "{}")),
              "code_version": json.loads(mv.tags.get("code_version", "{}")),
              "created_at": utcnow()}
    key = signing.load_key()   # None: no CLIP_UNLEARN_SIGNING_KEY; the certificate says "unsigned"
    files = write_certificate(_clean(record), job.dir / "certificate", key=key)
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
    c.set_model_version_tag(req.model, mv.version, "certificate", uri)
    return {"uri": uri, "html": storage.uri(job.storage, f"{prefix}/certificate.html"),
            "local": str(files["html"]), "verdict": ver["verdict"], "failed": ver["failed"],
            "table": format_table(result["before"], result["after"]),
            "method": {k: record["method"][k] for k in ("name", "chosen", "kind")},
            "attempts": record["method"]["attempts"], "lineage": record["lineage"]}


def method_record(name: str, result: dict) -> dict:
    """What the certificate says of the method: which one produced the version, of which kind, and
    (auto) every attempt with its val figures and time."""
    info = result.get("info", {})
    data_free = result.get("data_free")
    kind = "data-free" if data_free else "reads forgotten data" if data_free is not None else "unknown"
    return {"name": name, "chosen": info.get("chosen", name), "kind": kind, "config": result["config"],
            "seconds": result["seconds"], "attempts": [
                {k: a.get(k) for k in ("method", "data_free", "passed_val", "val", "seconds", "failed", "skipped")}
                for a in info.get("attempts", [])]}


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
        from clip_unlearn.schema import ConfigError

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
    import hashlib

    cfg = getattr(job.params.methods.get(job.request.method), "synthesis", None)
    blob = json.dumps([base_sha, job.request.dataset, job.request.classes, cfg and cfg.model_dump(),
                       job.params.benchmark.seed], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def synthetic_dir(job: Job, base_sha: str) -> Path:
    return Path(job.params.erase.workdir) / "synthetic" / synthetic_key(job, base_sha)


def is_transient(exc: BaseException) -> bool:
    """Failures worth retrying later (a server down or slow), as opposed to bad input."""
    from clip_unlearn.storage import ObjectNotFound, StorageError

    if isinstance(exc, ObjectNotFound):
        return False
    if isinstance(exc, (StorageError, ConnectionError, TimeoutError)):
        return True
    text = f"{type(exc).__name__}: {exc}"
    return any(s in text for s in ("Max retries exceeded", "Connection refused", "ConnectionError",
                                   "API request failed", "TEMPORARILY_UNAVAILABLE", "Read timed out"))


def register_base(params: Params, model_dir: str, name: str | None = None, metrics: dict | None = None,
                  log: Callable[[str], None] = print) -> dict:
    """Register a model (the reference, or a user's) as a base version; `champion` if the model
    has none yet. Idempotent: weights already registered return their version."""
    from clip_unlearn.models import WEIGHTS_FILE, file_sha256

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
