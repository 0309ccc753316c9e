"""Benchmark of the dispatch (a figure, not a test): 2 models x N requests on 1 worker, then on 2
workers, each worker running one flow run at a time. Prints the wall time from the first submit to
the last request done, how long the two models' requests ran at the same time, and per-request times.

    python scripts/bench_dispatch.py                          # 2 x 10 requests; 1 worker x 2 threads, 2 x 1
    python scripts/bench_dispatch.py --requests 3 --runs 2x1  # a quick look

Everything runs on loopback servers of its own (SeaweedFS, MLflow, `prefect server start`; the test
suite's tests/servers.py), a random clip-ref-tiny and the tiny data of the tests (scale 0.05), method
projection, the quick assurance settings of tests/test_stack.py. Every request goes through
flows/dispatch.py as `unlearn submit` does; each worker is `prefect worker start --limit 1` with
PREFECT_WORKER_QUERY_SECONDS=2 and OMP_NUM_THREADS=<threads>.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import servers  # noqa: E402  (tests/servers.py: the same servers the tests start)
import yaml  # noqa: E402

import clip_unlearn  # noqa: E402, F401
from clip_unlearn.pipeline.config import load_params  # noqa: E402

# a random model: what is timed is the dispatch, so nothing is judged (the depth attacks stay off)
DEPTH_OFF = {f"{g}depth_{m}_max": None for g in ("", "subgroup_") for m in ("prototypes", "probe", "relearn", "paraphrase")}
CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def setup(root: Path) -> dict:
    from clip_unlearn.pipeline import storage

    (root / "weed").mkdir()
    weed_ctx = servers.start_weed(root / "weed")
    weed = weed_ctx.__enter__()
    os.environ.update(AWS_ACCESS_KEY_ID=weed["key"], AWS_SECRET_ACCESS_KEY=weed["secret"],
                      AWS_ENDPOINT_URL=weed["endpoint"], AWS_DEFAULT_REGION="us-east-1",
                      AWS_EC2_METADATA_DISABLED="true")
    storage.ensure_bucket(storage.StorageConfig(bucket="bench"))
    (root / "mlflow").mkdir()
    _, mlflow = servers.start_mlflow(root / "mlflow", weed, "bench")
    os.environ["MLFLOW_TRACKING_URI"] = mlflow
    _, api = servers.start_prefect(root / "prefect", PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="2")
    os.environ["PREFECT_API_URL"] = api
    return {"weed": weed_ctx, "api": api}


def bench_params(root: Path, tag: str):
    from clip_unlearn.pipeline.reference import make_data

    base = load_params(REPO / "params.yaml")
    p = base.model_copy(update={
        "data": base.data.model_copy(update={"root": str(root / "data"), "scale": 0.05}),
        "storage": base.storage.model_copy(update={"bucket": "bench", "prefix": f"bench/{tag}"}),
        "gate": base.gate.model_copy(update={"forget_max": None, "retain_drop_max": None, "other_drop_max": None,
                                             "relearn_forget_max": 1.0, **DEPTH_OFF}),
        "assurance": base.assurance.model_copy(update={"relearn_steps": 2, "relearn_batch_size": 8,
                                                       "relearn_eval_every": 1, "probe_max_iter": 10,
                                                       "depth": base.assurance.depth.model_copy(update={"enabled": False})}),
        "erase": base.erase.model_copy(update={"workdir": str(root / "runs" / tag), "lease_seconds": 60,
                                               "schedule": base.erase.schedule.model_copy(
                                                   update={"erase_deployment": f"erase-{tag}"})}),
    })
    make_data(p)
    path = root / f"params-{tag}.yaml"
    path.write_text(yaml.safe_dump(json.loads(p.model_dump_json())))
    return p, str(path)


def workers_online(api: str, pool: str, names: list[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = urllib.request.Request(f"{api}/work_pools/{pool}/workers/filter", data=b"{}",
                                   headers={"content-type": "application/json"})
        with urllib.request.urlopen(r, timeout=10) as resp:
            online = {w["name"] for w in json.loads(resp.read()) if w["status"] == "ONLINE"}
        if set(names) <= online:
            return
        time.sleep(1)
    raise TimeoutError(f"workers {names} not online")


def overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Seconds during which some interval of a and some interval of b both ran (intervals of one
    model never overlap each other: one run at a time)."""
    return sum(max(0.0, min(x[1], y[1]) - max(x[0], y[0])) for x in a for y in b)


def one_config(root: Path, api: str, model_dir: str, n_workers: int, threads: int, n_requests: int) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    from clip_unlearn.pipeline.eventlog import EventLog
    from clip_unlearn.pipeline.registration import register_base
    from clip_unlearn.pipeline.request_store import ErasureRequest, RequestStore
    from clip_unlearn.pipeline.storage import safe_key
    from flows.deploy import deploy_erase
    from flows.dispatch import dispatch_request

    tag = f"{n_workers}w{threads}t-{uuid.uuid4().hex[:4]}"
    p, path = bench_params(root, tag)
    models = [f"bench-a-{tag}", f"bench-b-{tag}"]
    for m in models:
        register_base(p, model_dir, m, log=lambda s: None)
    pool = f"bench-{tag}"
    with get_client(sync_client=True) as c:
        c.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    deploy_erase(path, pool, p.erase.schedule.erase_deployment)
    names = [f"{tag}-w{i}" for i in range(n_workers)]
    workers = [servers.start_worker(api, pool, n, root / "workers" / n, limit=1, OMP_NUM_THREADS=str(threads),
                                    MKL_NUM_THREADS=str(threads)) for n in names]
    try:
        workers_online(api, pool, names)
        store = RequestStore(p.storage)
        ids = {m: [f"{m}-r{i:02d}" for i in range(n_requests)] for m in models}
        t0 = time.time()
        for m in models:   # all of a's first, then b's: b must not wait for a's backlog
            for i, rid in enumerate(ids[m]):
                # every request from v1 (not champion): equal jobs, no lineage that grows to every class
                store.submit(ErasureRequest(id=rid, requester="bench", model=m, base="1", dataset="digits",
                                            classes=[CLASSES[i % 10]], method="projection", reason="benchmark"))
                dispatch_request(p, rid, store, log=lambda s: None)
        submitted = time.time() - t0
        every = [r for m in models for r in ids[m]]
        while True:
            states = {r: store.state(r)["state"] for r in every}
            if all(s in ("done", "failed") for s in states.values()):
                break
            time.sleep(1)
        wall = time.time() - t0
    finally:
        for w in workers:
            servers.stop_worker(w)
    spans, runs, first, claims = {}, {}, {}, 0
    for m in models:
        spans[m], runs[m] = [], []
        for rid in ids[m]:
            evs = EventLog(p.storage, safe_key("requests", rid, "events")).events()
            claims += sum(e.get("step") == "claimed" for e in evs)
            claimed = next(e for e in evs if e.get("step") == "claimed")["until"] - p.erase.lease_seconds
            spans[m].append((claimed, datetime.fromisoformat(evs[-1]["at"]).timestamp() + 0.5))
        with get_client(sync_client=True) as c:
            for fr in c.read_flow_runs(flow_run_filter=FlowRunFilter(
                    name=FlowRunFilterName(any_=[f"erase-{r}" for r in ids[m]]))):
                runs[m].append((fr.start_time.timestamp(), fr.end_time.timestamp()))
                if fr.name == f"erase-{ids[m][0]}":   # the model's first run: on an idle worker
                    pending = min(s.timestamp.timestamp() for s in c.read_flow_run_states(fr.id) if s.type.value == "PENDING")
                    first[m] = {"picked_up_s": pending - fr.created.timestamp(),
                                "running_s": fr.start_time.timestamp() - fr.created.timestamp()}
    a, b = models
    job = [s[1] - s[0] for m in models for s in spans[m]]
    run = [r[1] - r[0] for m in models for r in runs[m]]
    return {"workers": n_workers, "threads": threads, "requests": 2 * n_requests, "wall_s": wall,
            "submit_s": submitted, "states": sorted(set(states.values())),
            "once": claims == 2 * n_requests and all(len(runs[m]) == n_requests for m in models),
            "first_b_claim_s": min(s[0] for s in spans[b]) - t0, "first_a_claim_s": min(s[0] for s in spans[a]) - t0,
            "overlap_claims_s": overlap(spans[a], spans[b]), "overlap_runs_s": overlap(runs[a], runs[b]),
            "job_mean_s": sum(job) / len(job), "run_mean_s": sum(run) / len(run),
            "first_picked_up_s": [round(first[m]["picked_up_s"], 1) for m in models],
            "first_running_s": [round(first[m]["running_s"], 1) for m in models]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=10, help="requests per model (2 models)")
    ap.add_argument("--runs", nargs="+", default=["1x2", "2x1"], help="WORKERSxTHREADS per configuration")
    ap.add_argument("--keep", action="store_true", help="keep the state folder (logs of servers and workers)")
    a = ap.parse_args()
    from clip_unlearn.core.models import load_model, save_model

    import torch

    servers.install_signal_handlers()   # SIGTERM/SIGHUP: stop the servers as Ctrl-C does
    root = Path(tempfile.mkdtemp(prefix="bench-dispatch-"))
    print(f"state in {root}; {os.cpu_count()} CPU cores", flush=True)
    ctx = setup(root)
    torch.manual_seed(0)
    model_dir = str(save_model(load_model("clip-ref-tiny", device="cpu"), root / "tiny"))
    results = []
    try:
        for spec in a.runs:
            n, t = (int(x) for x in spec.split("x"))
            print(f"-- {n} worker(s) x {t} thread(s), 2 models x {a.requests} requests", flush=True)
            r = one_config(root, ctx["api"], model_dir, n, t, a.requests)
            print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
            results.append(r)
    finally:
        servers.stop_all()
        ctx["weed"].__exit__(None, None, None)
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    print("\nworkers x threads | requests | wall (s) | first claim a / b (s) | models ran at once: claims / "
          "flow runs (s) | mean job / flow run (s) | first runs picked up / running (s) | each once")
    for r in results:
        print(f"{r['workers']} x {r['threads']} | {r['requests']} | {r['wall_s']:.0f} | {r['first_a_claim_s']:.0f} / "
              f"{r['first_b_claim_s']:.0f} | {r['overlap_claims_s']:.0f} / {r['overlap_runs_s']:.0f} | "
              f"{r['job_mean_s']:.1f} / {r['run_mean_s']:.1f} | {r['first_picked_up_s']} / {r['first_running_s']} | "
              f"{r['once'] and r['states'] == ['done']}")


if __name__ == "__main__":
    main()
