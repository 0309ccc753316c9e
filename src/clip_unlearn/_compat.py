"""Process-wide set-up that must run before torchvision/open_clip/mlflow/prefect are imported.

1. Telemetry off: every tool in the stack phones home unless told not to, and nothing here
   may reach the network. Bounded client retries. Users can still override each variable.
2. torchvision on a CPU-only torch: PyPI ships only CUDA builds of torchvision. Their `_C.so`
   fails to load silently against torch+cpu, and `torchvision/_meta_registrations.py` then
   registers fake kernels for `torchvision::nms`, an op that was never defined, raising
   "operator torchvision::nms does not exist". Defining the two op schemas first lets
   torchvision (transforms, datasets, models with weights=None) import; `torchvision.ops`
   and `torchvision.io` decoding stay unavailable, so images are decoded with PIL.
   On a CUDA torch, or when torchvision's own ops load, this does nothing.
3. One CPU code path on every x86 machine: oneDNN (the bf16 matmuls) and MKL (fp32 batched
   matmuls in attention) pick their kernels by instruction set, and each kernel rounds its own way,
   so the same params trained different reference weights on an AMX Xeon than on an AVX-512 BF16
   EPYC (docs/bootstrap.md, "Determinism"). Capped at AVX-512 BF16 for oneDNN and at MKL's AVX2
   reproducibility branch; both were measured to change nothing on the EPYC that trains the
   committed reference. Opt out (faster bf16 on AMX, other weights): ONEDNN_MAX_CPU_ISA=ALL
   MKL_CBWR=AUTO. Both are read at the first CPU kernel, so this must run before any torch op.
"""

from __future__ import annotations

import os

TELEMETRY_OFF = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow wants "true", not "1"
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GIT_PYTHON_REFRESH": "quiet",
    # Prefect's temporary local server needs more than its default 20 s under load.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # MLflow's client retries 7 times with backoff factor 2 by default (minutes while a server is
    # down). Bounded here: 3 retries, 1-4 s apart; the job records a retry and moves on.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}

# A value the user set wins (see the module docstring).
CPU_KERNELS = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16", "MKL_CBWR": "AVX2"}

_patched = False


def set_env_defaults() -> None:
    """Telemetry off and the CPU kernels pinned, unless the user set a variable already."""
    for key, value in {**TELEMETRY_OFF, **CPU_KERNELS}.items():
        os.environ.setdefault(key, value)


def _torchvision_ops_missing() -> bool:
    import importlib.util

    import torch

    if torch.version.cuda is not None or torch.version.hip is not None:
        return False
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:  # already defined (torchvision imported fine, or we ran before)
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        return False
    except RuntimeError:
        return True


def patch_torchvision() -> None:
    """Define torchvision's nms/qnms schemas when its compiled ops cannot load."""
    global _patched
    if _patched:
        return
    _patched = True
    import sys

    if "torchvision" in sys.modules or not _torchvision_ops_missing():
        return
    import torch

    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    # Keep the library object alive: dropping it would undefine the ops.
    globals()["_torchvision_fragment"] = lib


def setup() -> None:
    set_env_defaults()
    patch_torchvision()
