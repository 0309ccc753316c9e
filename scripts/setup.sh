#!/usr/bin/env bash
# Create .venv and install clip-unlearn into it (idempotent: reinstalls only when
# pyproject.toml or constraints.txt change). Usage: bash scripts/setup.sh
# CUDA machine: set TORCH_SPEC to your torch build, e.g.
#   TORCH_SPEC="torch==2.13.0 torchvision==0.28.0 --index-url https://download.pytorch.org/whl/cu128"
# It is installed first and kept; constraints.txt pins everything else.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then exit 0; fi
t0=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# pip warns about every package missing from the machine's extra local indexes: noise.
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
constraints=constraints.txt
# --no-compile: byte-compiling the 2.4 GB venv takes ~100 s on 2 cores; Python compiles what it imports.
if [ -n "${TORCH_SPEC:-}" ]; then
  # shellcheck disable=SC2086
  pip install --no-compile $TORCH_SPEC
  constraints="$VENV/constraints-user-torch.txt"
  grep -v -E '^(torch|torchvision)==' constraints.txt > "$constraints"
  "$VENV/bin/python" -c "import torch; print(f'torch=={torch.__version__}')" >> "$constraints"
fi
pip install --no-compile -c "$constraints" -e ".[dev]"
rm -f "$VENV"/.installed-*
touch "$stamp"
echo "setup: installed into $VENV in $(( $(date +%s) - t0 )) s"
