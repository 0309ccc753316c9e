"""Prefect tasks around the reference-model steps of `clip_unlearn.pipeline.reference`.

Tasks take params and return paths or small JSON-ready dicts, never models.
"""

from __future__ import annotations

from prefect import get_run_logger, task

from clip_unlearn.pipeline import reference
from clip_unlearn.pipeline.config import Params


@task(name="generate-dataset", retries=1, retry_delay_seconds=2)
def generate_dataset(params: Params, name: str) -> str:
    return str(reference.make_dataset(params, name))


@task(name="train-reference")
def train_reference(params: Params, force: bool = False) -> str:
    log = get_run_logger()
    if not force and reference.model_is_current(params):
        log.info("reference model in %s is current; not retraining", params.model.dir)
        return params.model.dir
    return str(reference.train_and_save(params, log=log.info))


@task(name="evaluate-zero-shot")
def evaluate_zero_shot(params: Params, model_dir: str) -> dict:
    results = reference.evaluate_model(params, model_dir=model_dir)
    get_run_logger().info("zero-shot accuracy\n%s", reference.format_table(results))
    return {name: {k: r[k] for k in ("n", "top1", "mean_per_class_recall")} for name, r in results.items()}
