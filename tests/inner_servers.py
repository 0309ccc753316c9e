"""Not collected by default: tests/test_no_orphans.py runs this file in an inner pytest. Its test
starts what the suite starts (S3, MLflow, a process with children of its own) and then restarts
MLflow and fails, or, with INNER_WAIT set, waits there to be interrupted."""

from __future__ import annotations

import os
import time
from pathlib import Path


def test_start_servers_then_fail_or_wait(stack):
    from servers import spawn, start_mlflow, stop

    if not os.environ.get("INNER_WAIT"):   # a restart, as tests/test_erasure.py does (once: seconds of CPU)
        stop(stack["mlflow_proc"])
        port = int(stack["mlflow"].rsplit(":", 1)[1])
        stack["mlflow_proc"], _ = start_mlflow(stack["mlflow_root"], stack, stack["bucket"], port=port)
    spawn(["bash", "-c", "sleep 300 & sleep 300 & wait"])   # like a worker: children of its own
    Path(os.environ["INNER_READY"]).write_text("up")
    if os.environ.get("INNER_WAIT"):
        time.sleep(300)   # interrupted here
    raise AssertionError("a test that fails while its servers run")
