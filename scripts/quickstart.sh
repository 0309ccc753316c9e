#!/usr/bin/env bash
# The main job on the embedded defaults, from a fresh clone:
#   set up .venv -> start the local stack (S3, MLflow, Prefect, worker; loopback) -> the data and
#   the reference CLIP as DVC's outputs (`dvc repro evaluate`: built and trained only if dvc.lock
#   says they are not current) -> register it as clip-ref's champion -> erase the default class
#   (params.yaml forget:) -> verify -> register the new version -> promote it if it passed ->
#   print the before/after table, the version and the certificate's path.
# Run it again: every step is skipped or resumed, nothing is registered twice.
set -euo pipefail
source "$(dirname "$0")/env.sh"
bash infra/stack.sh start
eval "$(bash infra/stack.sh env)"
dvc repro evaluate
unlearn bootstrap --register "$@"   # the model is current now: the zero-shot table, then the registry
status=0
unlearn erase || status=$?
unlearn models list
echo
echo "stack still running: bash infra/stack.sh status | stop;  MLflow http://127.0.0.1:5000  Prefect http://127.0.0.1:4200"
exit $status
