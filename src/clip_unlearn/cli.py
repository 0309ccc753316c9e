"""The `unlearn` command line.

    unlearn bootstrap            # data -> reference model -> zero-shot table (Prefect flow)
    unlearn data                 # DVC stage: generate the built-in datasets
    unlearn train-reference      # DVC stage: train the reference model
    unlearn evaluate             # DVC stage: zero-shot evaluation -> metrics/reference.json
    unlearn erase                # one erasure now: base -> forget -> verify -> register -> promote
    unlearn submit request.json  # queue a request in S3; `unlearn status` shows where it is
    unlearn process              # process the pending requests (what the schedule runs)
    unlearn serve                # the scheduled deployment on the Prefect server
    unlearn models list|promote|rollback|history|register
    unlearn report REQUEST_ID    # the certificate of a request (--verify: signature, hashes)
Exit codes: 0 ok, 1 verification failed / request failed, 2 bad input, 3 a server unreachable.
Every failure is one line on stderr with its exit code; `unlearn --debug ...` also prints the traceback.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Optional

import click
import typer
from typer.core import TyperGroup

import clip_unlearn  # noqa: F401
from clip_unlearn.config import ConfigError, load_params

_DEBUG = False   # --debug: print the traceback of a failure too


def _say(msg: str) -> None:
    """One red line on stderr: credentials scrubbed, lines joined, capped, any character printable."""
    from clip_unlearn.storage import scrub

    line = "; ".join(part.strip() for part in scrub(msg).splitlines() if part.strip())
    line = line if len(line) <= 2000 else line[:2000] + "..."
    typer.secho(line.encode("utf-8", "backslashreplace").decode("utf-8"), fg="red", err=True)


def _error(e: BaseException, code: int) -> typer.Exit:
    if _DEBUG:
        import traceback

        traceback.print_exception(e)
    _say(f"error: {e}")
    return typer.Exit(code)


def _exit_code(e: BaseException) -> int:
    """3 a server unreachable, 2 bad input, 1 anything else that failed."""
    from clip_unlearn.erasure.registry import RegistryError
    from clip_unlearn.erasure.steps import is_transient

    if isinstance(e, (ValueError, RegistryError)):   # ConfigError, an unknown model name, bad text
        return 2
    if is_transient(e):
        return 3
    return 2 if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)) else 1


class _Group(TyperGroup):
    """Turns any exception a command lets through into one line and its exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:  # noqa: BLE001
            raise _error(e, _exit_code(e)) from None


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True,
                  help="clip-unlearn: erase classes or subgroups from CLIP models and prove it.")
PARAMS = typer.Option("params.yaml", "--params", "-p", help="params file")


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="on a failure, also print its traceback")):
    global _DEBUG
    _DEBUG = debug


def _params(path: str):
    try:
        return load_params(path)
    except (ConfigError, OSError, UnicodeDecodeError) as e:
        raise _error(e, 2)


def _fail(e: Exception) -> typer.Exit:
    """Print a user-facing error (credentials scrubbed) and pick the exit code."""
    from clip_unlearn.erasure.steps import is_transient

    return _error(e, 3 if is_transient(e) and not isinstance(e, ConfigError) else 2)


@contextmanager
def _exit_on_error():
    """Any error (a registry or S3 failure, a bad name) as a message and an exit code."""
    try:
        yield
    except typer.Exit:
        raise
    except Exception as e:  # noqa: BLE001
        raise _fail(e)


def _erasure_errors():
    from clip_unlearn.erasure.registry import IntegrityError, RegistryError
    from clip_unlearn.storage import StorageError

    return (ConfigError, RegistryError, IntegrityError, StorageError, FileNotFoundError, ConnectionError)


@app.command()
def data(params: str = PARAMS):
    """Generate the built-in datasets (digits, shapes) under data.root."""
    from clip_unlearn.reference import make_data

    for path in make_data(_params(params)):
        typer.echo(f"wrote {path}")


@app.command("train-reference")
def train_reference(params: str = PARAMS):
    """Train the reference CLIP from scratch on the built-in training splits."""
    from clip_unlearn.reference import train_and_save

    typer.echo(f"saved {train_and_save(_params(params))}")


@app.command()
def evaluate(params: str = PARAMS,
             model: Optional[str] = typer.Option(None, help="model dir, local-dir:, s3:// or open_clip name"),
             dataset: Optional[list[str]] = typer.Option(None, help="dataset spec (repeatable)"),
             out: Optional[str] = typer.Option(None, help="summary JSON path")):
    """Zero-shot evaluation (template ensemble, top-1, mean per-class recall, per class/subgroup)."""
    from clip_unlearn.reference import evaluate_model, format_table

    results = evaluate_model(_params(params), model_dir=model, datasets=dataset, out=out)
    typer.echo(format_table(results))


@app.command()
def bootstrap(params: str = PARAMS, force_train: bool = typer.Option(False, help="retrain even if current"),
              register: bool = typer.Option(False, help="also register the model in MLflow as the base "
                                                        "(champion if there is none)")):
    """Run the bootstrap flow: data -> reference model (if needed) -> evaluation table."""
    p = _params(params)
    from flows.bootstrap import bootstrap as bootstrap_flow
    from clip_unlearn.reference import format_table

    out = bootstrap_flow(params_path=params, force_train=force_train)
    typer.echo(f"\nreference model: {out['model_dir']}\n")
    typer.echo(format_table(out["results"]))
    if register:
        from clip_unlearn.erasure.steps import register_base

        try:
            info = register_base(p, out["model_dir"], metrics=out["results"])
        except _erasure_errors() as e:
            raise _fail(e)
        typer.echo(f"\nbase model in the registry: {info['name']} v{info['version']}; aliases {info['aliases']}")


@app.command()
def forget(params: str = PARAMS,
           method: Optional[str] = typer.Option(None, help="method name (default: forget.method)"),
           dataset: Optional[str] = typer.Option(None, help="dataset of the request"),
           cls: Optional[list[str]] = typer.Option(None, "--class", help="class to forget (repeatable)"),
           where: Optional[list[str]] = typer.Option(None, help="subgroup filter attr=value (repeatable)"),
           model: Optional[str] = typer.Option(None, help="base model (default: model.dir)"),
           out: str = typer.Option("runs/forget/model", help="where to save the unlearned model"),
           report: str = typer.Option("runs/forget/result.json", help="BF/AF metrics JSON")):
    """Forget classes or a subgroup with one method; print before/after; save the model."""
    import json
    from pathlib import Path

    from clip_unlearn.models import load_model, save_model
    from clip_unlearn.unlearning import ForgetRequest, run_method
    from clip_unlearn.unlearning.benchmark import format_rows, row
    from clip_unlearn.unlearning.targets import check_targets

    p = _params(params)
    f = p.forget
    try:
        conds = dict(w.split("=", 1) for w in (where or []))
    except ValueError:
        typer.secho("--where takes attr=value, e.g. --where ink=red", fg="red", err=True)
        raise typer.Exit(2)
    request = ForgetRequest(dataset=dataset or f.dataset, classes=cls or f.classes,
                            where=conds if where else f.where)
    name = method or f.method
    try:
        bundle = load_model(model or p.model.dir, device=p.bootstrap.device)
        others = [d for d in p.data.datasets if d != request.dataset]
        result = run_method(bundle, request, name, p.methods.get(name), p.data.root, others, seed=p.benchmark.seed,
                            configs=p.methods, thresholds=p.verify.model_dump(),
                            assurance=p.assurance)
    except ConfigError as e:
        typer.secho(str(e), fg="red", err=True)
        raise typer.Exit(2)
    checks = check_targets(result["before"], result["after"], p.targets, request.is_subgroup)
    save_model(bundle, out, meta={"unlearning": {k: result[k] for k in ("method", "request", "config")}})
    Path(report).parent.mkdir(parents=True, exist_ok=True)
    Path(report).write_text(json.dumps(result | {"targets": checks}, indent=1) + "\n")
    typer.echo(format_rows([row(result, checks)]))
    typer.echo(f"model: {out}\nreport: {report}")
    if not all(checks.values()):
        raise typer.Exit(1)


@app.command()
def synthesize(params: str = PARAMS,
               dataset: Optional[str] = typer.Option(None, help="dataset (default: forget.dataset)"),
               cls: Optional[list[str]] = typer.Option(None, "--class", help="class (repeatable)"),
               model: Optional[str] = typer.Option(None, help="model (default: model.dir)"),
               out: str = typer.Option("runs/synthetic", help="output folder")):
    """Synthetic forget images by model inversion (class names only): tensors, grid.png, summary.json."""
    from clip_unlearn.models import load_model
    from clip_unlearn.unlearning import ForgetRequest
    from clip_unlearn.unlearning.context import UnlearnContext
    from clip_unlearn.unlearning.synthesize import save_synthetic
    from clip_unlearn.unlearning.synthesize import synthesize as make

    p = _params(params)
    request = ForgetRequest(dataset=dataset or p.forget.dataset, classes=cls or p.forget.classes)
    ctx = UnlearnContext(request, p.data.root, data_free=True)
    try:
        request.check(ctx.classes, {})
    except ConfigError as e:
        typer.secho(str(e), fg="red", err=True)
        raise typer.Exit(2)
    bundle = load_model(model or p.model.dir, device=p.bootstrap.device)
    syn = make(bundle, ctx.classes, ctx.forget_labels, request.dataset, p.methods["lipschitz"].synthesis,
               seed=p.benchmark.seed)
    folder = save_synthetic(syn, out, bundle.mean, bundle.std)
    typer.echo(f"wrote {folder} ({len(syn.labels)} images; grid: {folder / 'grid.png'})")


@app.command()
def benchmark(params: str = PARAMS,
              holdout: bool = typer.Option(True, help="also run the hold-out block (benchmark.holdout)")):
    """Run every method (and the oracle) on the benchmark requests; write metrics/benchmark.json."""
    from clip_unlearn.unlearning.benchmark import format_rows, format_summary, run_benchmark

    p = _params(params)
    out = run_benchmark(p, holdout=holdout)
    typer.echo("\n" + format_rows(out["rows"]))
    typer.echo("\n" + format_summary(out))
    typer.echo(f"\nwrote {p.benchmark.out}")


@app.command()
def methods():
    """List the registered unlearning methods."""
    from clip_unlearn.unlearning import METHODS

    for name, m in sorted(METHODS.items()):
        typer.echo(f"{name:<16} {'data-free' if m.data_free else 'uses data':<10} {m.summary}")


def _request(p, request_file: Optional[str], rid: Optional[str], dataset, cls, where, method, model, requester,
             reason):
    from clip_unlearn.erasure.requests import parse_request

    if request_file:
        from clip_unlearn.erasure.requests import read_request_file

        return read_request_file(request_file)
    d = p.default_request().model_dump()
    try:
        conds = dict(w.split("=", 1) for w in (where or []))
    except ValueError:
        typer.secho("--where takes attr=value, e.g. --where ink=red", fg="red", err=True)
        raise typer.Exit(2)
    given = {"id": rid, "dataset": dataset, "classes": cls or None, "where": conds or None, "method": method,
             "model": model, "requester": requester, "reason": reason}
    d |= {k: v for k, v in given.items() if v is not None}
    if (cls or dataset or method or where) and not rid:
        import hashlib
        import json

        d["id"] = "adhoc-" + hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
    return parse_request(d, "request")


def _check_request(p, req) -> None:
    """Before anything is queued or started: names against the dataset, model and base against the registry."""
    from clip_unlearn.erasure.registry import check_base
    from clip_unlearn.unlearning.context import cached_split

    try:
        ds = cached_split(req.dataset, "train", p.data.root)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"dataset {req.dataset!r}: {e}") from None
    req.forget_request().check(ds.classes, ds.attributes)
    check_base(p.registry, req.model, req.base)


REQ_OPTS = dict(
    request_file=typer.Option(None, "--request", "-r", help="request JSON file (docs/requests.md)"),
    rid=typer.Option(None, "--id", help="request id (default: erase.request_id, or derived from the content)"),
    dataset=typer.Option(None, help="dataset (default: forget.dataset)"),
    cls=typer.Option(None, "--class", help="class to forget (repeatable; default: forget.classes)"),
    where=typer.Option(None, help="subgroup filter attr=value (repeatable)"),
    method=typer.Option(None, help="method (default: forget.method)"),
    model=typer.Option(None, help="registered model (default: registry.model_name)"),
    requester=typer.Option(None, help="who asks"),
    reason=typer.Option(None, help="why (legal basis, ticket)"),
)


@app.command()
def erase(params: str = PARAMS, request_file: Optional[str] = REQ_OPTS["request_file"],
          rid: Optional[str] = REQ_OPTS["rid"], dataset: Optional[str] = REQ_OPTS["dataset"],
          cls: Optional[list[str]] = REQ_OPTS["cls"], where: Optional[list[str]] = REQ_OPTS["where"],
          method: Optional[str] = REQ_OPTS["method"], model: Optional[str] = REQ_OPTS["model"],
          requester: Optional[str] = REQ_OPTS["requester"], reason: Optional[str] = REQ_OPTS["reason"]):
    """Run one erasure now (the erase flow): forget, verify, register; promote if it passed."""
    p = _params(params)
    try:
        req = _request(p, request_file, rid, dataset, cls, where, method, model, requester, reason)
        _check_request(p, req)
        from clip_unlearn import storage

        storage.exists(p.storage, storage.safe_key("requests", req.id, "request.json"))   # S3 answers
        from flows.erase import erase as erase_flow

        out = erase_flow(request=req.model_dump(), params_path=params)
    except _erasure_errors() as e:
        raise _fail(e)
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


@app.command()
def submit(request_file: str = typer.Argument(..., help="request JSON file (docs/requests.md)"),
           params: str = PARAMS):
    """Validate a request and queue it in S3 (requests/<id>/); the scheduled job picks it up."""
    p = _params(params)
    from clip_unlearn.erasure.requests import RequestStore

    try:
        req = _request(p, request_file, None, None, None, None, None, None, None, None)
        _check_request(p, req)
        outcome = RequestStore(p.storage).submit(req)
    except _erasure_errors() as e:
        raise _fail(e)
    typer.echo(f"{req.id}: {'submitted' if outcome == 'created' else 'already submitted (same content); unchanged'}")


@app.command()
def status(request_id: Optional[str] = typer.Argument(None, help="one request (default: all)"),
           params: str = PARAMS, as_json: bool = typer.Option(False, "--json", help="machine-readable")):
    """Where each request stands: pending, running, retry, done (version, certificate) or failed (reason)."""
    import json

    p = _params(params)
    from clip_unlearn.erasure.requests import RequestStore

    try:
        store = RequestStore(p.storage)
        ids = [request_id] if request_id else store.ids()
        if request_id:
            store.get(request_id)
        rows = [store.state(i) for i in ids]
    except _erasure_errors() as e:
        raise _fail(e)
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    typer.echo(f"{'request':<28} {'state':<8} {'tries':>5}  {'since':<25} detail")
    for r in rows:
        last = r["last"]
        detail = (f"v{last['version']} {last.get('certificate', '')}" if r["state"] == "done"
                  else last.get("reason", last.get("step", "")))
        typer.echo(f"{r['id']:<28} {r['state']:<8} {r['attempts']:>5}  {last.get('at', ''):<25} {detail}")


@app.command()
def process(params: str = PARAMS, max_requests: int = typer.Option(0, help="stop after this many (0: all)")):
    """Process every pending request now (the flow the schedule runs), grouped per model."""
    _params(params)
    from flows.process import process_requests

    try:
        out = process_requests(params_path=params, max_requests=max_requests)
    except _erasure_errors() as e:
        raise _fail(e)
    for r in out:
        typer.echo(f"{r['id']:<28} {r['state']:<8} {r.get('version', '') and 'v' + r['version']} "
                   f"{r.get('reason', r.get('certificate', ''))}")
    if any(r["state"] == "failed" for r in out):
        raise typer.Exit(1)


@app.command()
def serve(params: str = PARAMS, cron: Optional[str] = typer.Option(None, help="cron (default: erase.schedule.cron)"),
          work_pool: Optional[str] = typer.Option(None, help="work pool (default: erase.schedule.work_pool)"),
          run_now: bool = typer.Option(False, help="also start one run now and wait for it")):
    """Create or update the scheduled deployment of process-requests on the Prefect server."""
    _params(params)
    import os

    if not os.environ.get("PREFECT_API_URL"):
        typer.secho("PREFECT_API_URL is not set: start the stack and load its environment "
                    "(bash infra/stack.sh start; eval \"$(bash infra/stack.sh env)\")", fg="red", err=True)
        raise typer.Exit(2)
    from flows.deploy import deploy, run_now as run

    info = deploy(params, cron=cron, work_pool=work_pool)
    typer.echo(f"deployment {info['name']} ({info['id']}): cron '{info['cron']}' on work pool {info['work_pool']}")
    if run_now:
        typer.echo(str(run(info["name"])))


models_app = typer.Typer(no_args_is_help=True, help="The registry: list, promote, roll back, audit.")
app.add_typer(models_app, name="models")


def _registry(params: str):
    from clip_unlearn.erasure import registry

    p = _params(params)
    try:
        return p, registry.client(p.registry)
    except registry.RegistryError as e:
        raise _fail(e)


@models_app.command("list")
def models_list(model: Optional[str] = typer.Argument(None), params: str = PARAMS):
    """Every version with its verdict, request, method, what it forgot, and aliases."""
    from clip_unlearn.erasure import registry

    p, c = _registry(params)
    name = model or p.registry.model_name
    with _exit_on_error():
        rows = [registry.describe(v) for v in registry.versions(c, name)]
        for a, v in registry.aliases(c, name).items():
            for r in rows:
                if r["version"] == v:
                    r["aliases"] = ",".join(sorted(set(filter(None, r["aliases"].split(",") + [a]))))
    typer.echo(f"{name}")
    typer.echo(f"{'ver':>4} {'aliases':<20} {'verdict':<8} {'base':>4} {'method':<12} {'request':<28} forgotten")
    for r in rows:
        typer.echo(f"{r['version']:>4} {r['aliases']:<20} {r['verdict']:<8} {r['base']:>4} {r['method']:<12} "
                   f"{r['request_id']:<28} {r['forgotten']}")


@models_app.command("promote")
def models_promote(version: str, reason: str = typer.Option(..., help="why (recorded in the audit log)"),
                   model: Optional[str] = typer.Option(None), params: str = PARAMS,
                   force: bool = typer.Option(False, help="promote a version whose verification did not pass")):
    """Point `champion` at VERSION (only a version that passed verification, unless --force)."""
    from clip_unlearn.erasure import registry

    p, c = _registry(params)
    name = model or p.registry.model_name
    with _exit_on_error():
        mv = registry.resolve(c, name, version)
        verdict = (mv.tags or {}).get("verdict")
        if verdict not in ("passed", "base") and not force:
            typer.secho(f"{name} v{mv.version} has verdict {verdict!r}: not promoting without evidence "
                        "(--force records an override)", fg="red", err=True)
            raise typer.Exit(1)
        why = reason if verdict in ("passed", "base") else f"{reason} [forced: verdict {verdict}]"
        rec = registry.move_alias(c, p.storage, name, "champion", mv.version, why=why)
    typer.echo(f"{name}@champion: v{rec['from']} -> v{rec['to']} ({rec['who']}, {rec['when']})")


@models_app.command("rollback")
def models_rollback(reason: str = typer.Option(..., help="why (recorded in the audit log)"),
                    model: Optional[str] = typer.Option(None), params: str = PARAMS):
    """Move `champion` back to where it pointed before its last move."""
    from clip_unlearn.erasure import registry

    p, c = _registry(params)
    name = model or p.registry.model_name
    with _exit_on_error():
        moves = [r for r in registry.audit_log(p.storage, name) if r["alias"] == "champion"]
        current = registry.aliases(c, name).get("champion")
        prev = next((r["from"] for r in reversed(moves) if r["to"] == current and r["from"]), None)
        if prev is None:
            typer.secho(f"{name}: champion v{current} has no earlier champion to roll back to", fg="red", err=True)
            raise typer.Exit(1)
        rec = registry.move_alias(c, p.storage, name, "champion", prev, why=f"rollback: {reason}", expect=current)
    typer.echo(f"{name}@champion: v{rec['from']} -> v{rec['to']} (rollback)")


@models_app.command("history")
def models_history(model: Optional[str] = typer.Argument(None), params: str = PARAMS):
    """Every alias move: when, who, alias, from, to, why."""
    from clip_unlearn.erasure import registry

    p = _params(params)
    name = model or p.registry.model_name
    try:
        for r in registry.audit_log(p.storage, name):
            typer.echo(f"{r['when']}  {r['who']:<24} {r['alias']:<10} v{r['from']} -> v{r['to']}  {r['why']}")
    except _erasure_errors() as e:
        raise _fail(e)


@models_app.command("register")
def models_register(model_dir: str, name: Optional[str] = typer.Option(None, help="registered model name"),
                    params: str = PARAMS):
    """Register a saved model folder (yours or the reference) as a base version."""
    from clip_unlearn.erasure.steps import register_base

    p = _params(params)
    try:
        info = register_base(p, model_dir, name)
    except _erasure_errors() as e:
        raise _fail(e)
    typer.echo(f"{info['name']} v{info['version']} (weights {info['sha256'][:12]}); aliases {info['aliases']}")


@app.command()
def report(request_id: str, params: str = PARAMS,
           out: str = typer.Option("runs/reports", help="where to download the certificate"),
           verify: bool = typer.Option(False, "--verify", help="also check the signature against the registry's "
                                       "public key and the weights in S3 against the registry and the certificate"),
           public_key: Optional[str] = typer.Option(None, help="with --verify: trust this PEM public key "
                                                    "instead of the one recorded in the registry")):
    """Download a request's certificate (JSON, HTML, PNG), check its hash, print its table.
    Exit 1 if any check fails (an unsigned certificate fails --verify)."""
    import json
    from pathlib import Path

    from clip_unlearn import signing, storage
    from clip_unlearn.certificate import format_table, verify_certificate

    p = _params(params)
    trusted = None
    if public_key:
        try:
            trusted = Path(public_key).read_text()
            signing.load_public(trusted)
        except (OSError, UnicodeDecodeError, ConfigError) as e:
            typer.secho(f"--public-key {public_key}: {e}", fg="red", err=True)
            raise typer.Exit(2)
    try:
        folder = Path(out) / storage.safe_key(request_id)
        storage.download_dir(p.storage, storage.safe_key("certificates", request_id), folder)
    except (ValueError, *_erasure_errors()) as e:
        raise _fail(e)
    try:
        cert = json.loads((folder / "certificate.json").read_text())
        table = format_table(cert["before"], cert["after"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        typer.secho(f"{folder / 'certificate.json'}: not a certificate ({type(e).__name__}: {e})", fg="red", err=True)
        raise typer.Exit(1)
    ok = verify_certificate(folder / "certificate.json")
    sig = cert.get("signature")
    signed = f"signed by key {sig.get('key_id')}" if isinstance(sig, dict) else "UNSIGNED"
    typer.echo(table)
    typer.echo(f"\nverdict: {cert.get('verdict')}   model: {cert['model']['name']} v{cert['model']['version']}   "
               f"integrity: {'ok' if ok else 'MISMATCH'}   {signed}\ncertificate: {folder / 'certificate.html'}")
    if verify:
        with _exit_on_error():
            checks = signing.audit(p, folder / "certificate.json", trusted)
        typer.echo("")
        for name, matched, detail in checks:
            typer.secho(f"{name:<12} {'ok' if matched else 'MISMATCH':<9} {detail}", fg=None if matched else "red")
        ok = ok and all(m for _, m, _ in checks)
        typer.secho(f"\nverify: {'every check matched' if ok else 'FAILED'}", fg="green" if ok else "red", bold=True)
    if not ok:
        raise typer.Exit(1)


@app.command()
def stage(name: str = typer.Argument(..., help="synthesize | unlearn | verify | register"), params: str = PARAMS):
    """One erasure step on the reference model and the default request (DVC stages, dvc.yaml)."""
    from clip_unlearn.erasure.dvc_stages import STAGES

    p = _params(params)
    if name not in STAGES:
        typer.secho(f"unknown stage {name!r}; allowed: {', '.join(STAGES)}", fg="red", err=True)
        raise typer.Exit(2)
    try:
        out = STAGES[name](p)
    except _erasure_errors() as e:
        raise _fail(e)
    if out:
        typer.echo(json.dumps(out, indent=1))


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":
    main()
