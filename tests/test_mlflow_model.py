"""Registered versions are MLflow models: pyfunc from the registry in a fresh process, `mlflow models
serve`, our own loader on models:/ URIs, and the run behind each version (real servers: S3 + MLflow)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from clip_unlearn.core.clip_ops import encode_images, encode_texts
from clip_unlearn.core.models import load_model
from clip_unlearn.core.splits import cached_split
from clip_unlearn.pipeline import model_registry as reg
from clip_unlearn.pipeline.mlflow_model import png_bytes
from clip_unlearn.pipeline.registration import register_base

TEXTS = ["a photo of the digit seven.", "a drawing of a star."]


@pytest.fixture(scope="module")
def registered(tiny_params, stack, tiny_model_dir):
    """A base version (v1, champion) of a fresh registered model, and a few test images as PNG."""
    name = f"pyfunc-{uuid.uuid4().hex[:6]}"
    p = tiny_params.model_copy(update={
        "storage": tiny_params.storage.model_copy(update={"bucket": stack["bucket"], "prefix": f"t/{name}"}),
        "registry": tiny_params.registry.model_copy(update={"model_name": name, "experiment": "tests"})})
    info = register_base(p, tiny_model_dir, log=lambda _: None)
    images, _ = cached_split("digits", "test", p.data.root).tensors()
    return {"params": p, "name": name, "info": info, "images": images[:4],
            "pngs": [png_bytes(x) for x in images[:4]]}


def _reference(registered, uri: str):
    bundle = load_model(uri, device="cpu")   # our loader, on the same models:/ URI
    return (encode_images(bundle, registered["images"]).numpy(), encode_texts(bundle, TEXTS).numpy())


def test_pyfunc_from_the_registry_predicts_in_a_fresh_process(registered, tmp_path):
    uri = f"models:/{registered['name']}@champion"
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"images": [base64.b64encode(b).decode() for b in registered["pngs"]], "texts": TEXTS}))
    script = (
        "import base64, json, sys, numpy as np, pandas as pd, mlflow\n"
        "d = json.load(open(sys.argv[2]))\n"
        "m = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "img = m.predict(pd.DataFrame({'image': [base64.b64decode(x) for x in d['images']]}))\n"
        "txt = m.predict(pd.DataFrame({'text': d['texts']}))\n"
        "zs = m.predict(pd.DataFrame({'image': [base64.b64decode(x) for x in d['images']]}),\n"
        "               params={'task': 'zero_shot', 'classnames': ['seven', 'star']})\n"
        "np.savez(sys.argv[3], img=img, txt=txt, zs=zs)\n")
    out = tmp_path / "out.npz"
    res = subprocess.run([sys.executable, "-c", script, uri, str(inputs), str(out)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert res.returncode == 0, res.stderr[-3000:]
    got = np.load(out)
    img, txt = _reference(registered, uri)
    assert np.abs(got["img"] - img).max() <= 1e-5 and np.abs(got["txt"] - txt).max() <= 1e-5
    assert np.allclose(np.linalg.norm(got["img"], axis=1), 1.0, atol=1e-5)
    assert got["zs"].shape == (4, 2) and np.allclose(got["zs"].sum(1), 1.0, atol=1e-5)


def test_a_version_is_an_mlflow_model_with_a_signature_and_its_run(registered):
    c = reg.client(registered["params"].registry)
    mv = c.get_model_version(registered["name"], registered["info"]["version"])
    assert reg.is_mlflow_model(mv) and mv.tags["weights_sha256"] == registered["info"]["sha256"]
    from mlflow.models import get_model_info

    info = get_model_info(f"models:/{registered['name']}/{mv.version}")
    assert [s["name"] for s in info.signature.inputs.to_dict()] == ["image", "text"]
    assert {p.name for p in info.signature.params.params} == {"task", "classnames", "templates"}
    run = c.get_run(mv.run_id)                       # the base has a run too
    assert run.info.run_name == f"base-{registered['name']}"
    assert run.data.tags.get("mlflow.source.git.commit") and run.data.tags["mlflow.source.type"] == "JOB"
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"digits", "shapes"}
    assert all(m.timestamp > 1e12 for m in c.get_metric_history(mv.run_id, "zero_shot.digits.top1")) or \
        "zero_shot.digits.top1" not in run.data.metrics


def test_open_clip_reads_the_registered_folder_as_it_is(registered, tmp_path):
    import open_clip

    from clip_unlearn.core.models import mlflow_model_dir

    folder = mlflow_model_dir(registered["name"], registered["info"]["version"], tmp_path / "m")
    model, _, _ = open_clip.create_model_and_transforms("local-dir:" + str(folder))
    ours = load_model(str(folder), device="cpu").model.state_dict()
    assert all(torch.equal(v, ours[k]) for k, v in model.state_dict().items() if k in ours)


def test_a_bad_models_uri_says_what_to_give(registered):
    with pytest.raises(Exception, match="NAME/VERSION|NAME@ALIAS|not found|RESOURCE_DOES_NOT_EXIST"):
        load_model(f"models:/{registered['name']}", device="cpu")


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(registered, tmp_path):
    from servers import free_port, spawn, stop

    port = free_port()
    mlflow_bin = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = spawn([mlflow_bin, "models", "serve", "-m", f"models:/{registered['name']}@champion", "--env-manager",
                  "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"], cwd=tmp_path, env=env,
                 stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "wb"))
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(1)
        body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(b).decode()]
                                                                   for b in registered["pngs"]]}}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            got = np.array(json.loads(r.read())["predictions"], dtype=np.float32)
        img, _ = _reference(registered, f"models:/{registered['name']}@champion")
        assert got.shape == img.shape and np.abs(got - img).max() <= 1e-5
    finally:
        stop(proc, sig=2)
