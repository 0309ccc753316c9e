"""Erasure requests: the schema, and their store in S3 (`requests/<id>/`).

    req = ErasureRequest(id="gdpr-2026-0042", requester="dpo@example.com", model="clip-ref",
                         dataset="digits", classes=["seven"], method="subgroup", reason="GDPR art. 17")
    store = RequestStore(storage_cfg)
    store.submit(req)                 # "created", or "exists" for the same content; ConfigError if the
                                      # id was used before for a different request
    claim = store.claim(req.id, ttl=900, max_attempts=3)   # None if another worker has it
    claim.renew()                     # while the job runs (a heartbeat thread, pipeline/heartbeat.py)
    claim.finish("done", version="3", certificate="s3://...")

`requests/<id>/request.json` is written once (conditional put). Where a request stands is the
last event of `requests/<id>/events/` (see eventlog.py): pending -> running -> done | failed,
and running -> retry -> running when a transient failure (S3 or MLflow down) is retried. A
running request whose worker died is claimed again once its claim expires; a live worker renews
its claim (a `running` event with a later `until`) while the job runs, however long it takes.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field, field_validator

from clip_unlearn.core.gate import Thresholds
from clip_unlearn.core.request import ForgetRequest
from clip_unlearn.core.schema import ConfigError, validate
from clip_unlearn.methods import METHODS
from clip_unlearn.pipeline import storage
from clip_unlearn.pipeline.eventlog import EventLog, LeaseLost, utcnow
from clip_unlearn.pipeline.storage import ObjectNotFound, StorageConfig

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
PREFIX = "requests"
MAX_REQUEST_BYTES = 2**20   # a request file larger than this is refused (docs/requests.md)
FINAL = ("done", "failed")


class ErasureRequest(ForgetRequest):
    """One erasure request (docs/requests.md): what to forget (a ForgetRequest: dataset, classes,
    where) plus who asks, why, from which model, with which method and limits. Everything but
    `where`, `method`, `allow_forgotten_data`, `thresholds` and `base` is required."""
    id: str = Field(pattern=ID_PATTERN, description="unique id chosen by the requester (letters, digits . _ -)")
    requester: str = Field(min_length=1, max_length=200)
    model: str = Field(pattern=NAME_PATTERN, description="registered model name in MLflow")
    base: str = Field("champion", pattern=r"^([A-Za-z][A-Za-z0-9_-]{0,63}|[1-9][0-9]{0,8})$",
                      description="alias or version of the model to erase from")
    method: str = "auto"
    allow_forgotten_data: bool | None = Field(
        None, description="auto: may methods that read real images of what is forgotten run, if every "
                          "data-free one fails? (None: params methods.auto.allow_forgotten_data)")
    thresholds: dict[str, float | None] = Field(default_factory=dict, description="overrides of params gate:")
    reason: str = Field(min_length=1, max_length=2000)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if ".." in v:
            raise ValueError(f"id {v!r} must not contain '..'")
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if v not in METHODS or v == "oracle":
            allowed = sorted(m for m in METHODS if m != "oracle")
            raise ValueError(f"unknown method {v!r}; allowed: {', '.join(allowed)}")
        return v

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, v: dict) -> dict:
        validate(Thresholds, v, "thresholds")  # names the bad key and the allowed range
        return v

    def forget_request(self) -> ForgetRequest:
        """What to forget, without the job's fields."""
        return ForgetRequest(dataset=self.dataset, classes=self.classes, where=self.where)

    def content_sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()


def parse_request(data: dict | str, source: str = "request") -> ErasureRequest:
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{source}: not valid JSON ({e})") from None
        except RecursionError:
            raise ConfigError(f"{source}: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a JSON object with the fields of ErasureRequest "
                          f"({', '.join(ErasureRequest.model_fields)})")
    return validate(ErasureRequest, data, source)


def read_request_file(path: str | Path) -> ErasureRequest:
    """A request from a JSON file: UTF-8 text (a BOM is allowed), not empty, at most MAX_REQUEST_BYTES."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {'not a regular file' if path.exists() else 'no such request file'}")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_REQUEST_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the request file ({e.strerror or e})") from None
    if len(raw) > MAX_REQUEST_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_REQUEST_BYTES // 2**20} MiB, the limit for a request file")
    nul = raw.find(b"\0")
    if nul >= 0:
        raise ConfigError(f"{path}: a binary file (NUL byte at offset {nul}), not a JSON request")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                          "save the request as UTF-8 JSON") from None
    if not text.strip():
        raise ConfigError(f"{path}: empty file; a request is a JSON object (docs/requests.md)")
    return parse_request(text, str(path))


@dataclass
class Claim:
    """A running attempt at a request, owned by this worker. `renew` (from a heartbeat thread) and
    `finish` take turns: each event is appended after the one before it, never beside it."""
    store: "RequestStore"
    id: str
    seq: int
    attempt: int
    ttl: float
    finished: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def renew(self) -> None:
        """Push the claim's expiry to now + ttl. LeaseLost if another worker took the request over
        (our claim had expired); nothing once finished."""
        with self._lock:
            if self.finished:
                return
            event = {"state": "running", "attempt": self.attempt, "until": time.time() + self.ttl, "step": "renewed"}
            if not self.store._log(self.id).append(self.seq, event):
                raise LeaseLost(f"request {self.id}: another worker took it over (attempt {self.attempt})")
            self.seq += 1

    def finish(self, state: str, **detail) -> bool:
        """Record the outcome: done / failed (final) or retry (picked up again later). False if
        another worker had taken the request over."""
        assert state in ("done", "failed", "retry"), state
        with self._lock:
            ok = self.store._log(self.id).append(self.seq, {"state": state, "attempt": self.attempt, **detail})
            self.seq += ok
            self.finished = True
            return ok


class RequestStore:
    def __init__(self, cfg: StorageConfig, client=None):
        self.cfg = cfg
        self.client = client or storage.s3_client(cfg)

    def _log(self, rid: str) -> EventLog:
        return EventLog(self.cfg, storage.safe_key(PREFIX, rid, "events"), self.client)

    def submit(self, req: ErasureRequest) -> str:
        body = json.dumps({**req.model_dump(), "submitted_at": utcnow()}, sort_keys=True, indent=1)
        key = storage.safe_key(PREFIX, req.id, "request.json")
        if storage.put_if_absent(self.cfg, key, body, content_type="application/json", client=self.client):
            self._log(req.id).append(0, {"state": "pending"})
            return "created"
        if self.get(req.id).content_sha256() != req.content_sha256():
            raise ConfigError(f"request id {req.id!r} was already used for a different request; nothing was "
                              "changed. Give this request a new id (ids are never reused).")
        if self._log(req.id).last()[1] is None:  # submitted before a crash between the two writes
            self._log(req.id).append(0, {"state": "pending"})
        return "exists"

    def get(self, rid: str) -> ErasureRequest:
        try:
            data = storage.get_json(self.cfg, storage.safe_key(PREFIX, rid, "request.json"), client=self.client)
        except ObjectNotFound:
            raise ConfigError(f"no request with id {rid!r}; `unlearn status` lists them") from None
        data.pop("submitted_at", None)
        return parse_request(data, f"request {rid}")

    def ids(self) -> list[str]:
        keys = storage.list_keys(self.cfg, PREFIX + "/", client=self.client)
        return sorted({k.split("/")[-2] for k in keys if k.endswith("/request.json")})

    def state(self, rid: str) -> dict:
        events = self._log(rid).events()
        last = events[-1] if events else {"state": "pending", "seq": 0}
        attempts = max((e.get("attempt", 0) for e in events), default=0)
        return {"id": rid, "state": last["state"], "seq": last["seq"], "attempts": attempts, "last": last,
                "submitted": events[0]["at"] if events else None}

    def claimable(self, st: dict, now: float | None = None) -> bool:
        s, last = st["state"], st["last"]
        if s in ("pending", "retry"):
            return True
        return s == "running" and last.get("until", 0) < (now or time.time())

    def claim(self, rid: str, ttl: float, max_attempts: int) -> Claim | None:
        st = self.state(rid)
        if not self.claimable(st):
            return None
        if st["attempts"] >= max_attempts:
            self._log(rid).append(st["seq"], {"state": "failed", "attempt": st["attempts"],
                                              "reason": f"gave up after {st['attempts']} attempts; last: "
                                                        f"{st['last'].get('reason', 'worker stopped')}"})
            return None
        attempt = st["attempts"] + 1
        if not self._log(rid).append(st["seq"], {"state": "running", "attempt": attempt,
                                                 "until": time.time() + ttl, "step": "claimed"}):
            return None
        return Claim(self, rid, st["seq"] + 1, attempt, ttl)

    def give_up(self, rid: str, reason: str) -> bool:
        """Mark a request that is still waiting as failed (e.g. its flow runs keep ending before they
        claim it). False if it is running under a live claim, finished, or another writer came first."""
        st = self.state(rid)
        if not self.claimable(st):
            return False
        return self._log(rid).append(st["seq"], {"state": "failed", "attempt": st["attempts"], "reason": reason})
