#!/usr/bin/env bash
# Set up, then run the test suite. Default: fast tests. Pass pytest args, e.g. `-m slow`.
source "$(dirname "$0")/env.sh"
exec python -m pytest "$@"   # exec: a SIGTERM to this script reaches pytest, which stops its servers
