"""Commands of the erasure job: erase (one now), submit (queue), status, process, serve (schedule),
stage (one step as a DVC stage)."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

import typer

from clip_unlearn.cli import errors
from clip_unlearn.cli.options import PARAMS, REQUEST
from clip_unlearn.core.schema import ConfigError


def _request(p, request_file: Optional[str], rid=None, dataset=None, cls=None, where=None, method=None, model=None,
             requester=None, reason=None):
    """A request from a file, or params' default request with the options given on the command line."""
    from clip_unlearn.pipeline.request_store import parse_request, read_request_file

    if request_file:
        return read_request_file(request_file)
    d = p.default_request().model_dump()
    conds = errors.where_option(where)
    given = {"id": rid, "dataset": dataset, "classes": cls or None, "where": conds or None, "method": method,
             "model": model, "requester": requester, "reason": reason}
    d |= {k: v for k, v in given.items() if v is not None}
    if (cls or dataset or method or where) and not rid:
        d["id"] = "adhoc-" + hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
    return parse_request(d, "request")


def _check_request(p, req) -> None:
    """Before anything is queued or started: names against the dataset, model and base against the registry."""
    from clip_unlearn.core.splits import cached_split
    from clip_unlearn.pipeline.model_registry import check_base

    try:
        ds = cached_split(req.dataset, "train", p.data.root)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"dataset {req.dataset!r}: {e}") from None
    req.forget_request().check(ds.classes, ds.attributes)
    check_base(p.registry, req.model, req.base)


def erase(params: str = PARAMS, request_file: Optional[str] = REQUEST["request_file"],
          rid: Optional[str] = REQUEST["rid"], dataset: Optional[str] = REQUEST["dataset"],
          cls: Optional[list[str]] = REQUEST["cls"], where: Optional[list[str]] = REQUEST["where"],
          method: Optional[str] = REQUEST["method"], model: Optional[str] = REQUEST["model"],
          requester: Optional[str] = REQUEST["requester"], reason: Optional[str] = REQUEST["reason"]):
    """Run one erasure now (the erase flow): forget, verify, register; promote if it passed."""
    from clip_unlearn.pipeline import storage
    from flows.erase import erase as erase_flow

    p = errors.params(params)
    req = _request(p, request_file, rid, dataset, cls, where, method, model, requester, reason)
    _check_request(p, req)
    storage.exists(p.storage, storage.safe_key("requests", req.id, "request.json"))   # S3 answers
    out = erase_flow(request=req.model_dump(), params_path=params)
    _print_erasure(out)
    if out["verdict"] != "passed":
        raise typer.Exit(1)


def _print_erasure(out: dict) -> None:
    typer.echo(f"\nrequest {out['request_id']}: {out['model']} v{out['base_version']} -> v{out['version']}\n")
    typer.echo(out["table"])
    m = out.get("method") or {}
    if m:
        chosen = m["chosen"] if m["chosen"] == m["name"] else f"{m['name']} -> {m['chosen']}"
        typer.echo(f"\nmethod: {chosen} ({m['kind']})")
    for a in out.get("attempts") or []:
        typer.echo(f"  tried {a['method']:<12} " + (f"skipped: {a['skipped']}" if a.get("skipped") else
                   f"{'passed' if a['passed_val'] else 'failed'} on val in {a['seconds']:.1f} s"))
    for e in out.get("lineage") or []:
        value = "n/a" if e.get("value") is None else f"{e['value']:.3f}"
        typer.echo(f"earlier erasure {e['request_id']} ({e['forgotten']}, v{e['version']}): top-1 {value} "
                   f"(limit {e['limit']})")
    colour = "green" if out["verdict"] == "passed" else "red"
    typer.secho(f"\nverdict: {out['verdict'].upper()}", fg=colour, bold=True)
    for reason in out.get("failed_checks", []):
        typer.secho(f"  failed: {reason}", fg="red")
    typer.echo(f"registered: {out['model']} v{out['version']} "
               f"({'promoted to champion' if out['promoted'] else 'candidate, not promoted'})")
    typer.echo(f"certificate: {out['certificate_local']}\n             {out['certificate_html']}")


def submit(request_file: str = typer.Argument(..., help="request JSON file (docs/requests.md)"),
           params: str = PARAMS):
    """Validate a request, store it in S3 (requests/<id>/) and start its flow run on Prefect now
    (when a server with the erase deployment answers); otherwise the sweeper starts it later."""
    from clip_unlearn.pipeline.request_store import RequestStore

    p = errors.params(params)
    req = _request(p, request_file)
    _check_request(p, req)
    store = RequestStore(p.storage)
    outcome = store.submit(req)
    typer.echo(f"{req.id}: {'submitted' if outcome == 'created' else 'already submitted (same content); unchanged'}")
    from flows.dispatch import dispatch_request, unavailable

    why = unavailable(p)
    if why is None:
        try:
            info = dispatch_request(p, req.id, store, log=lambda s: None)
        except Exception as e:  # noqa: BLE001  (queued is enough: the sweeper starts it)
            why = f"{type(e).__name__}: {e}"
        else:
            if info and info.get("flow_run"):
                fr = info["flow_run"]
                typer.echo(f"{req.id}: flow run {fr['name']} ({fr['state']}) on {fr['deployment']}")
            else:
                typer.echo(f"{req.id}: {store.state(req.id)['state']}; nothing to start")
            return
    typer.echo(errors.one_line(f"{req.id}: queued, not started now ({why}); the sweeper (process-requests) "
                               "starts it"))


def status(request_id: Optional[str] = typer.Argument(None, help="one request (default: all)"),
           params: str = PARAMS, as_json: bool = typer.Option(False, "--json", help="machine-readable")):
    """Where each request stands: pending, running, retry, done (version, certificate) or failed (reason)."""
    from clip_unlearn.pipeline.request_store import RequestStore

    p = errors.params(params)
    store = RequestStore(p.storage)
    ids = [request_id] if request_id else store.ids()
    if request_id:
        store.get(request_id)
    rows = [store.state(i) for i in ids]
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    typer.echo(f"{'request':<28} {'state':<8} {'tries':>5}  {'since':<25} detail")
    for r in rows:
        last = r["last"]
        detail = (f"v{last['version']} {last.get('certificate', '')}" if r["state"] == "done"
                  else last.get("reason", last.get("step", "")))
        typer.echo(f"{r['id']:<28} {r['state']:<8} {r['attempts']:>5}  {last.get('at', ''):<25} {detail}")


def process(params: str = PARAMS, max_requests: int = typer.Option(0, help="stop after this many (0: all)"),
            here: bool = typer.Option(False, "--here", help="run them in this process even if Prefect could")):
    """Start every pending request: on Prefect (one flow run each) when a server with the erase
    deployment answers, else (or with --here) run them in this process, skipping busy models."""
    from flows.process import process_requests

    errors.params(params)
    out = process_requests(params_path=params, max_requests=max_requests, mode="here" if here else "auto")
    for r in out:
        fr = r.get("flow_run")
        detail = (f"flow run {fr['name']} ({fr['state']})" if fr else
                  (r.get("version", "") and "v" + r["version"]) + " " + r.get("reason", r.get("certificate", "")))
        typer.echo(f"{r['id']:<28} {r['state']:<10} {detail}")
    if any(r["state"] == "failed" for r in out):
        raise typer.Exit(1)


def serve(params: str = PARAMS, cron: Optional[str] = typer.Option(None, help="cron (default: erase.schedule.cron)"),
          work_pool: Optional[str] = typer.Option(None, help="work pool (default: erase.schedule.work_pool)"),
          run_now: bool = typer.Option(False, help="also start one sweep now and wait for it")):
    """Deploy erase-request (one run per request; `submit` starts it) and the cron sweeper
    process-requests on the Prefect server."""
    errors.params(params)
    if not os.environ.get("PREFECT_API_URL"):
        raise ConfigError("PREFECT_API_URL is not set: start the stack and load its environment "
                          "(bash infra/stack.sh start; eval \"$(bash infra/stack.sh env)\")")
    from flows.deploy import deploy
    from flows.deploy import run_now as run

    info = deploy(params, cron=cron, work_pool=work_pool)
    typer.echo(f"deployment {info['erase_name']} ({info['erase_id']}) on work pool {info['work_pool']}: "
               "one flow run per request, one at a time per model")
    typer.echo(f"deployment {info['name']} ({info['id']}): cron '{info['cron']}' on work pool {info['work_pool']}")
    if run_now:
        typer.echo(str(run(info["name"])))


def stage(name: str = typer.Argument(..., help="synthesize | unlearn | verify | register"), params: str = PARAMS):
    """One erasure step on the reference model and the default request (DVC stages, dvc.yaml)."""
    from clip_unlearn.cli.stages import STAGES

    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; allowed: {', '.join(STAGES)}")
    out = STAGES[name](errors.params(params))
    if out:
        typer.echo(json.dumps(out, indent=1))
