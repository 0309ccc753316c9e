"""Append-only event logs in S3 with compare-and-swap appends, and leases built on them.

    log = EventLog(cfg, "requests/req-1/events")
    seq, last = log.last()                        # (0, None) when empty
    log.append(seq, {"state": "running"})         # False if another writer appended first

Each event is one object `<prefix>/<seq:08d>.json`, written with S3's conditional put
(If-None-Match: *): of two writers appending after the same event exactly one succeeds, on any
machine. That is the only synchronisation the pipeline uses (no local locks).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from datetime import datetime, timezone

from clip_unlearn.pipeline import storage
from clip_unlearn.pipeline.storage import StorageConfig


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def worker_id() -> str:
    """host:pid:random, unique per process and recorded with every event it writes."""
    return f"{socket.gethostname()}:{os.getpid()}:{_TOKEN}"


_TOKEN = uuid.uuid4().hex[:8]


class EventLog:
    def __init__(self, cfg: StorageConfig, prefix: str, client=None):
        self.cfg, self.prefix, self.client = cfg, prefix.rstrip("/"), client

    def _key(self, seq: int) -> str:
        return f"{self.prefix}/{seq:08d}.json"

    def seqs(self) -> list[int]:
        keys = storage.list_keys(self.cfg, self.prefix + "/", client=self.client)
        return sorted(int(k.rsplit("/", 1)[1].split(".")[0]) for k in keys if k.endswith(".json"))

    def events(self) -> list[dict]:
        return [storage.get_json(self.cfg, self._key(s), client=self.client) for s in self.seqs()]

    def last(self) -> tuple[int, dict | None]:
        seqs = self.seqs()
        if not seqs:
            return 0, None
        return seqs[-1], storage.get_json(self.cfg, self._key(seqs[-1]), client=self.client)

    def append(self, after_seq: int, event: dict) -> bool:
        """Append `event` as number after_seq + 1; False if that number is taken (lost the race)."""
        event = {"seq": after_seq + 1, "at": utcnow(), "by": worker_id(), **event}
        body = json.dumps(event, sort_keys=True).encode()
        return storage.put_if_absent(self.cfg, self._key(after_seq + 1), body,
                                     content_type="application/json", client=self.client)


class LeaseLost(RuntimeError):
    """Another worker took over (our lease expired, or someone appended after our last event)."""


class Lease:
    """A lease on a name (e.g. one registered model), held by one worker until released or expired.

        lease = Lease(cfg, "locks/models/clip-ref", ttl=900)
        lease.acquire(wait=600)     # TimeoutError if another worker keeps it
        ...                         # only one worker in here for this model, on any machine
        lease.renew(); lease.release()
    """

    def __init__(self, cfg: StorageConfig, prefix: str, ttl: float = 900, client=None):
        self.log, self.ttl, self.seq = EventLog(cfg, prefix, client), ttl, 0

    def try_acquire(self) -> bool:
        seq, last = self.log.last()
        if last and last["state"] == "held" and last["by"] != worker_id() and last["until"] > time.time():
            return False
        if self.log.append(seq, {"state": "held", "until": time.time() + self.ttl}):
            self.seq = seq + 1
            return True
        return False

    def acquire(self, wait: float = 0, poll: float = 1.0) -> None:
        deadline = time.monotonic() + wait
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                _, last = self.log.last()
                raise TimeoutError(f"lease {self.log.prefix} is held by {last and last.get('by')} until "
                                   f"{last and time.strftime('%H:%M:%S', time.gmtime(last['until']))} UTC")
            time.sleep(poll)

    def renew(self) -> None:
        if not self.log.append(self.seq, {"state": "held", "until": time.time() + self.ttl}):
            raise LeaseLost(f"lease {self.log.prefix}: another worker took it over; stopping")
        self.seq += 1

    def release(self) -> None:
        if self.log.append(self.seq, {"state": "released"}):
            self.seq += 1
