"""Prefect tasks around the erasure steps of `clip_unlearn.pipeline.steps`.

Tasks take params, the request and paths/URIs, and return small JSON-ready dicts, never models
or clients. Steps that talk to S3 or MLflow retry with backoff; the synthetic set is cached.
"""

from __future__ import annotations

import uuid

from prefect import get_run_logger, task

from clip_unlearn.pipeline import steps
from clip_unlearn.pipeline.config import Params
from clip_unlearn.pipeline.errors import is_transient
from clip_unlearn.pipeline.request_store import ErasureRequest


def _transient(task, task_run, state) -> bool:
    try:
        state.result()
    except Exception as e:  # noqa: BLE001
        return is_transient(e)
    return False


# S3 / MLflow hiccups are retried with backoff; bad input and integrity errors are not.
IO_RETRIES = dict(retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=_transient)


def _job(params: Params, request: ErasureRequest) -> steps.Job:
    return steps.Job.create(params, request, log=get_run_logger().info)


@task(name="resume-check", **IO_RETRIES)
def resume(params: Params, request: ErasureRequest):
    return steps.resume(_job(params, request))


@task(name="fetch-base-model", **IO_RETRIES)
def fetch_base(params: Params, request: ErasureRequest) -> dict:
    return steps.fetch_base(_job(params, request))


@task(name="prepare-data", retries=1, retry_delay_seconds=2)
def prepare_data(params: Params, request: ErasureRequest) -> str:
    return steps.prepare_data(_job(params, request))


def _synthetic_cache_key(ctx, args: dict) -> str:
    # Cached only while the folder it made exists (in this checkout): a missing folder gets a
    # fresh key, so the task runs and the step makes the set again.
    job = steps.Job(args["params"], args["request"], None)
    folder = steps.synthetic_dir(job, args["base_sha"]).resolve()
    return f"synthetic-{folder}" if (folder / "summary.json").is_file() else f"synthetic-{uuid.uuid4()}"


@task(name="synthesize", cache_key_fn=_synthetic_cache_key, refresh_cache=None)
def synthesize(params: Params, request: ErasureRequest, base_dir: str, base_sha: str) -> str | None:
    return steps.synthesize(_job(params, request), base_dir, base_sha)


@task(name="unlearn")
def unlearn(params: Params, request: ErasureRequest, base_dir: str, synthetic_dir: str | None,
            lineage: list[dict] = ()) -> dict:
    return steps.unlearn(_job(params, request), base_dir, synthetic_dir, lineage)


@task(name="verify")
def verify(params: Params, request: ErasureRequest, base_dir: str, model_dir: str, result: str,
           lineage: list[dict] = ()) -> dict:
    return steps.verify(_job(params, request), base_dir, model_dir, result, lineage)


@task(name="register", **IO_RETRIES)
def register(params: Params, request: ErasureRequest, base: dict, unlearned: dict, verification: dict) -> dict:
    return steps.register(_job(params, request), base, unlearned, verification)


@task(name="certificate", **IO_RETRIES)
def certify(params: Params, request: ErasureRequest, base: dict, registered: dict) -> dict:
    return steps.certify(_job(params, request), base, registered)


@task(name="promote", **IO_RETRIES)
def promote(params: Params, request: ErasureRequest, base: dict, registered: dict) -> dict:
    return steps.promote(_job(params, request), base, registered)
