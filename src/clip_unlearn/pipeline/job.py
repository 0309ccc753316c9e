"""One erasure job's working state (params, request, folder), its JSON evidence files, and the
lineage a registered version carries.

    job = Job.create(params, request)            # job folder runs/erase/<request id>/
    write_json(job.dir / "result.json", result)   # NaN -> null, atomic
    lineage = lineage_of(model_version)           # [{"request_id", "forgotten", "limit", "version"}]
    earlier(lineage)                              # the same as core.request.Earlier entries
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from clip_unlearn.core.gate import Thresholds, forget_limit
from clip_unlearn.core.request import Earlier, ForgetRequest
from clip_unlearn.pipeline import model_registry as reg
from clip_unlearn.pipeline import storage
from clip_unlearn.pipeline.config import Params
from clip_unlearn.pipeline.request_store import ErasureRequest


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


def clean(obj):
    """JSON-ready: NaN -> None (JSON has no NaN)."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def write_json(path: Path, obj) -> Path:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(clean(obj), indent=1, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
    return path


def lineage_of(mv) -> list[dict]:
    """What a registered version has forgotten, oldest first: [{"request_id", "forgotten" (a
    ForgetRequest.describe()), "limit" (the forget top-1 it was verified at), "version" (the version
    that made it)}]. Read from the version's `lineage` tag; older versions only have `forgotten_all`."""
    if mv.tags.get("lineage"):
        entries = json.loads(mv.tags["lineage"])
    else:
        entries = [{"request_id": "(unrecorded)", "forgotten": f, "version": None,
                    "limit": forget_limit(Thresholds(), bool(ForgetRequest.parse(f).where))}
                   for f in mv.tags.get("forgotten_all", "").split(";") if f]
    return [{**e, "version": e.get("version") or str(mv.version)} for e in entries]


def earlier(lineage: list[dict]) -> list[Earlier]:
    return [Earlier.model_validate(e) for e in lineage]


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
