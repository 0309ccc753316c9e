"""Prefect flows (drivers). A checkout's own `src/` comes first on the import path, so that a flow run
whose code came from a deployment's git clone (prefect.yaml) imports that clone's clip_unlearn, not
the copy installed in the worker's environment. Each flow module imports this package before
clip_unlearn. In an installed package or this repository's own checkout it changes nothing."""

import sys
from pathlib import Path

_SRC = Path(__file__).resolve().parents[1] / "src"
if (_SRC / "clip_unlearn").is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))
