"""clip-unlearn: erase classes or subgroups from CLIP models and prove it.

Importing the package first makes the environment safe for the rest of the stack
(telemetry off, torchvision importable on a CPU-only torch): see `_compat`.
"""

from clip_unlearn import _compat

_compat.setup()

__version__ = "0.1.0"
