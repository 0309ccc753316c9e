"""The `unlearn` command line: a driver over the pipeline, like flows/ (Prefect) and dvc.yaml.

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

Exit codes (errors.py, one rule for every command): 0 ok, 1 verification failed / request failed,
2 bad input, 3 a server unreachable. A failure is one line on stderr; `unlearn --debug ...` adds the
traceback. Each command imports what it needs when it runs, so `unlearn --help` or `unlearn status`
does not load torch.
"""

from __future__ import annotations

import sys

import typer

import clip_unlearn  # noqa: F401
from clip_unlearn.cli import errors, jobs, methods, models, reference, report

app = typer.Typer(cls=errors.Group, add_completion=False, no_args_is_help=True,
                  help="clip-unlearn: erase classes or subgroups from CLIP models and prove it.")


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="on a failure, also print its traceback")):
    errors.DEBUG["traceback"] = debug


for _name, _fn in [("data", reference.data), ("train-reference", reference.train_reference),
                   ("evaluate", reference.evaluate), ("bootstrap", reference.bootstrap),
                   ("forget", methods.forget), ("synthesize", methods.synthesize), ("benchmark", methods.benchmark),
                   ("methods", methods.methods), ("erase", jobs.erase), ("submit", jobs.submit),
                   ("status", jobs.status), ("process", jobs.process), ("serve", jobs.serve),
                   ("report", report.report), ("stage", jobs.stage)]:
    app.command(_name)(_fn)
app.add_typer(models.app, name="models")


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":
    main()
