"""Nothing a test run starts outlives it. An inner pytest (tests/inner_servers.py) starts S3,
MLflow and a process with children, then restarts MLflow and fails, or is interrupted mid-test
by SIGTERM or by SIGINT (Ctrl-C); once it has exited, no process carrying its mark in its
environment may be left (everything the inner run starts inherits the mark, even in other
sessions or after reparenting)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from servers import spawn, stop

REPO = Path(__file__).resolve().parents[1]
MARK = "CLIP_UNLEARN_TEST_RUN"
# Ctrl-C must reach the inner pytest even where this run was started with SIGINT ignored (a
# background job of a non-interactive shell): reset it, then exec pytest.
PYTEST = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
          "os.execv(sys.executable, [sys.executable, '-m', 'pytest', *sys.argv[1:]])")


def marked(mark: str) -> dict[int, str]:
    """pid -> command line of the live (not zombie) processes whose environment has MARK=mark."""
    try:
        import psutil
    except ImportError:
        psutil = None
    found = {}
    if psutil:
        for p in psutil.process_iter():
            try:
                if p.status() != psutil.STATUS_ZOMBIE and p.environ().get(MARK) == mark:
                    found[p.pid] = " ".join(p.cmdline())
            except psutil.Error:
                continue
        return found
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if f"{MARK}={mark}".encode() in (d / "environ").read_bytes().split(b"\0") and \
                    (d / "stat").read_text().rsplit(") ", 1)[1][0] != "Z":
                found[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return found


def _inner(tmp_path: Path, how: str):
    mark = f"{how}-{uuid.uuid4().hex}"
    env = dict(os.environ, **{MARK: mark}, INNER_READY=str(tmp_path / f"{how}.ready"))
    if how != "fail":
        env["INNER_WAIT"] = "1"
    with open(tmp_path / f"{how}.log", "wb") as log:
        proc = spawn([sys.executable, "-c", PYTEST, "tests/inner_servers.py", "-q", "-p", "no:cacheprovider",
                      f"--basetemp={tmp_path / how}"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, mark


@pytest.mark.slow
def test_no_process_started_by_a_run_outlives_it(tmp_path):
    runs = {how: _inner(tmp_path, how) for how in ("fail", "SIGTERM", "SIGINT")}   # side by side
    log = lambda how: (tmp_path / f"{how}.log").read_text(errors="replace")[-3000:]  # noqa: E731
    try:
        for how in ("SIGTERM", "SIGINT"):
            proc, mark = runs[how]
            deadline = time.monotonic() + 300
            while not (tmp_path / f"{how}.ready").exists():
                assert proc.poll() is None and time.monotonic() < deadline, log(how)
                time.sleep(0.2)
            running = " ".join(marked(mark).values())   # what the check can see: the servers in their sessions
            assert all(s in running for s in ("weed", "mlflow server", "uvicorn", "sleep 300")), running
            if how == "SIGTERM":
                os.kill(proc.pid, signal.SIGTERM)         # `kill PID`
            else:
                os.killpg(proc.pid, signal.SIGINT)        # Ctrl-C: the terminal's process group
        for how, (proc, mark) in runs.items():
            rc = proc.wait(timeout=180)
            deadline, left = time.monotonic() + 5, marked(mark)
            while left and time.monotonic() < deadline:   # SIGKILLed processes need a moment
                time.sleep(0.2)
                left = marked(mark)
            assert left == {}, (how, rc, sorted(left.values()))
            assert rc == (1 if how == "fail" else 2), (how, rc, log(how))   # 1: failed, 2: interrupted
            assert ("1 failed" if how == "fail" else "KeyboardInterrupt") in log(how), log(how)
    finally:
        for proc, mark in runs.values():
            stop(proc)
            for pid in marked(mark):   # a failed check must not leave them running either
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
