"""Keep claims and leases alive while a job runs: renew them every `interval` seconds on a daemon
thread, so that a job that runs longer than their TTL is never taken over and run twice.

    with Heartbeat(claim.ttl / 3, claim.renew, lease.renew, log=print) as beat:
        out = run(request)            # as long as it takes
    beat.lost                         # the LeaseLost of a renewal that another worker made fail

A renewal that raises LeaseLost (another worker took over) is dropped and remembered; any other
error (S3 unreachable for a moment) is logged and tried again at the next beat: with an interval
of a third of the TTL, two beats can fail before anything expires. Leaving the block stops the
thread and waits for a renewal in flight, so the caller can then finish or release safely.
"""

from __future__ import annotations

import threading
from typing import Callable

from clip_unlearn.pipeline.eventlog import LeaseLost
from clip_unlearn.pipeline.storage import scrub


class Heartbeat:
    def __init__(self, interval: float, *renewals: Callable[[], None], log: Callable[[str], None] = print,
                 name: str = "heartbeat"):
        if interval <= 0:
            raise ValueError(f"heartbeat interval must be > 0 s, got {interval}")
        self.interval, self.log = interval, log
        self._renewals = list(renewals)
        self.lost: LeaseLost | None = None
        self.beats = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while self._renewals and not self._stop.wait(self.interval):
            for renew in list(self._renewals):
                try:
                    renew()
                except LeaseLost as e:
                    self.lost = self.lost or e
                    self._renewals.remove(renew)
                    self.log(f"heartbeat: {e}")
                except Exception as e:  # noqa: BLE001  (a server hiccup: try again at the next beat)
                    self.log(f"heartbeat: renewal failed, retrying in {self.interval:.0f} s "
                             f"({scrub(f'{type(e).__name__}: {e}')[:300]})")
            self.beats += 1
