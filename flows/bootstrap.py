"""Bootstrap flow: built-in data -> reference CLIP -> zero-shot evaluation.

    python -m flows.bootstrap [params.yaml]      # or: unlearn bootstrap

Runs locally with no Prefect server configured (Prefect starts a temporary one).
"""

from __future__ import annotations

import sys

from prefect import flow
from prefect.artifacts import create_markdown_artifact

import flows  # noqa: F401  (first: a git clone's own src/, see flows/__init__.py)
import clip_unlearn  # noqa: F401  (telemetry off, torchvision patched)
from clip_unlearn.pipeline.config import load_params
from clip_unlearn.pipeline.reference import format_table
from tasks.reference import evaluate_zero_shot, generate_dataset, train_reference


@flow(name="bootstrap", log_prints=True)
def bootstrap(params_path: str = "params.yaml", force_train: bool = False) -> dict:
    params = load_params(params_path)
    data = [generate_dataset.submit(params, name) for name in params.data.datasets]
    model_dir = train_reference(params, force=force_train, wait_for=data)
    results = evaluate_zero_shot(params, model_dir)
    create_markdown_artifact(key="reference-zero-shot",
                             markdown=f"```\n{format_table(results)}\n```",
                             description="Zero-shot accuracy of the reference model")
    return {"model_dir": model_dir, "results": results}


if __name__ == "__main__":
    out = bootstrap(*sys.argv[1:2])
    print(format_table(out["results"]))
