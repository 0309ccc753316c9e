import os
import subprocess
import sys


def test_open_clip_imports_in_a_fresh_interpreter():
    # A new process, so nothing imported by the test session can hide a failure.
    code = "import clip_unlearn, open_clip, torchvision.transforms, os; print(os.environ['MLFLOW_DISABLE_TELEMETRY'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "true"


_KERNELS = """
import os, torch
import clip_unlearn  # noqa: F401
a = torch.randn(64, 64)
with torch.autocast("cpu", dtype=torch.bfloat16):
    (a @ a).sum()
print("pins", os.environ["ONEDNN_MAX_CPU_ISA"], os.environ["MKL_CBWR"])
"""


def test_importing_the_package_pins_one_cpu_code_path_and_a_user_value_wins():
    """Weights must not depend on whether the CPU has AMX (docs/bootstrap.md, "Determinism"): oneDNN
    is capped at AVX-512 BF16 even when torch was imported first, and a user's own setting is kept."""
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "MKL_CBWR")}
    out = subprocess.run([sys.executable, "-c", _KERNELS], env={**env, "ONEDNN_VERBOSE": "1"},
                         capture_output=True, text=True, check=True).stdout
    assert "pins AVX512_CORE_BF16 AVX2" in out
    isa = [line for line in out.splitlines() if ",cpu,isa:" in line]   # none where oneDNN has no bf16 kernel
    assert not any("AMX" in line or "float16," in line for line in isa), isa
    mine = subprocess.run([sys.executable, "-c", _KERNELS], env={**env, "ONEDNN_MAX_CPU_ISA": "ALL", "MKL_CBWR": "AUTO"},
                          capture_output=True, text=True, check=True).stdout
    assert "pins ALL AUTO" in mine
