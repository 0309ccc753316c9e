"""A registered CLIP version as an MLflow model: a pyfunc whose one artifact is the open_clip
`local-dir:` folder (open_clip_config.json + open_clip_model.safetensors, as save_model writes it).

    mlflow.pyfunc.load_model("models:/clip-ref@champion").predict(pd.DataFrame({"image": [png_bytes]}))
    mlflow models serve -m models:/clip-ref@champion --env-manager local    # POST /invocations

Input: a DataFrame with columns `image` (PNG/JPEG bytes; base64 text over HTTP) and `text` (string),
exactly one of them per row (the other cell None, or "" over HTTP). Params:
  task        "embed" (default): one L2-normalized embedding per row, float32 [N, D]
              "zero_shot": image rows only, softmax(100 cos) over `classnames`, float32 [N, C]
  classnames  class names (zero_shot)
  templates   prompt templates with "{c}" (zero_shot; default "a photo of a {c}.")

Logged as "models from code" (mlflow_model_code.py, nothing pickled) with client calls only, so
worker processes never share MLflow's process-global run state. Inside the MLflow model the open_clip
folder is `artifacts/clip_model/`: open_clip and our load_model read it as it is.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import tempfile
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.models import Model, ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec
from PIL import Image

from clip_unlearn.core.clip_ops import encode_image, encode_texts, to_model_input
from clip_unlearn.core.models import load_model
from clip_unlearn.core.zero_shot import class_vectors

ARTIFACT = "clip_model"                    # artifacts/clip_model/ inside the MLflow model
CODE_FILE = Path(__file__).with_name("mlflow_model_code.py")
DEFAULT_TEMPLATES = ["a photo of a {c}."]
REQUIREMENTS = ["mlflow", "torch", "torchvision", "open_clip_torch", "safetensors", "numpy", "pandas", "pillow",
                "clip-unlearn"]


class ClipPyfunc(mlflow.pyfunc.PythonModel):
    """CLIP embeddings and zero-shot probabilities (CLIP_UNLEARN_DEVICE picks the device, default cpu)."""
    _skip_type_hint_validation = True   # MLflow's own check of predict's type hints: signature() is the schema

    def load_context(self, context):
        folder = context.artifacts[ARTIFACT]
        self.bundle = load_model("local-dir:" + folder, device=os.environ.get("CLIP_UNLEARN_DEVICE", "cpu"))

    def predict(self, context, model_input, params=None):
        params = params or {}
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        images = df["image"] if "image" in df else pd.Series([None] * len(df))
        texts = df["text"] if "text" in df else pd.Series([None] * len(df))
        is_image, is_text = images.map(_present).to_numpy(), texts.map(_present).to_numpy()
        if (is_image == is_text).any():
            row = int(np.flatnonzero(is_image == is_text)[0])
            raise ValueError(f"row {row}: give exactly one of 'image' (PNG/JPEG bytes, base64 over HTTP) or 'text'")
        task = params.get("task") or "embed"
        if task not in ("embed", "zero_shot"):
            raise ValueError(f"unknown task {task!r}: 'embed' or 'zero_shot'")
        b = self.bundle
        with torch.no_grad():
            feats = None
            if is_image.any():
                x = torch.cat([to_model_input(b, decode_image(v)[None]) for v in images[is_image]])
                feats = torch.cat([encode_image(b.model, x[i:i + 256], normalize=True)
                                   for i in range(0, len(x), 256)]).float().cpu()
            if task == "zero_shot":
                names = list(params.get("classnames") or [])
                if not names or is_text.any():
                    raise ValueError("task zero_shot needs params.classnames and image rows only")
                w = class_vectors(b, names, list(params.get("templates") or DEFAULT_TEMPLATES)).cpu()
                return (100.0 * feats @ w.T).softmax(dim=-1).numpy().astype(np.float32)
            out = np.zeros((len(df), b.model_cfg["embed_dim"]), dtype=np.float32)
            if feats is not None:
                out[is_image] = feats.numpy()
            if is_text.any():
                out[is_text] = encode_texts(b, [str(t) for t in texts[is_text]]).float().cpu().numpy()
            return out


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and v != v) and len(v) > 0


def decode_image(v) -> torch.Tensor:
    """PNG/JPEG bytes, or their base64 text (MLflow decodes a binary column for dataframe_split and
    dataframe_records, not for inputs/instances) -> uint8 [3, H, W]."""
    raw = v.encode("ascii") if isinstance(v, str) else bytes(v)
    if not raw.startswith((b"\x89PNG", b"\xff\xd8", b"GIF8", b"BM")):
        raw = base64.b64decode(raw, validate=True)
    arr = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def png_bytes(image: torch.Tensor) -> bytes:
    """A uint8 [3, H, W] image as PNG bytes (lossless: the embedding equals that of the tensor)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8).transpose(1, 2, 0)).save(buf, format="PNG")
    return buf.getvalue()


def signature() -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("binary", "image", required=False), ColSpec("string", "text", required=False)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1))]),
        params=ParamSchema([ParamSpec("task", "string", "embed"),
                            ParamSpec("classnames", "string", [], shape=(-1,)),
                            ParamSpec("templates", "string", DEFAULT_TEMPLATES, shape=(-1,))]))


def pip_requirements() -> list[str]:
    """The versions this process runs, pinned (torch's local label "+cpu" is no index's: dropped)."""
    out = []
    for name in REQUIREMENTS:
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            out.append(name)
    return out


def log_clip_model(client, run_id: str, model_dir: str | Path, name: str = "clip", tags: dict | None = None):
    """Log `model_dir` as a pyfunc of run `run_id` (client calls only: no active run, no global tracking
    URI). Returns the LoggedModel; a version registered from it has source models:/<model_id>."""
    run = client.get_run(run_id)
    lm = client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id,
                                    tags={k: str(v) for k, v in (tags or {}).items()})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / ARTIFACT            # MLflow copies an artifact folder under its own name
            shutil.copytree(model_dir, staged, ignore=shutil.ignore_patterns("*.json.tmp"))
            local = Path(tmp) / "model"
            meta = Model(artifact_path=lm.artifact_location, model_uuid=lm.model_id, run_id=run_id, model_id=lm.model_id)
            with warnings.catch_warnings():   # "no input example": the signature says what the input is
                warnings.filterwarnings("ignore", message=".*input example.*")
                mlflow.pyfunc.save_model(local, python_model=str(CODE_FILE), artifacts={ARTIFACT: str(staged)},
                                         signature=signature(), pip_requirements=pip_requirements(), mlflow_model=meta)
            client.log_model_artifacts(lm.model_id, str(local))
        client.log_outputs(run_id, [LoggedModelOutput(lm.model_id, step=0)])
        client.finalize_logged_model(lm.model_id, LoggedModelStatus.READY)
    except BaseException:
        client.finalize_logged_model(lm.model_id, LoggedModelStatus.FAILED)
        raise
    return client.get_logged_model(lm.model_id)
