import subprocess
import sys


def test_open_clip_imports_in_a_fresh_interpreter():
    # A new process, so nothing imported by the test session can hide a failure.
    code = "import clip_unlearn, open_clip, torchvision.transforms, os; print(os.environ['MLFLOW_DISABLE_TELEMETRY'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "true"
