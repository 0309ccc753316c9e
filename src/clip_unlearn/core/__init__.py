"""The core: data, models, training, zero-shot evaluation, measurements and the gate.

Plain functions on tensors, paths and typed configs. Nothing here imports the methods, the
pipeline or a driver (import-linter contracts in pyproject.toml; tests/test_layers.py).
"""
