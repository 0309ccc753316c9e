#!/usr/bin/env bash
# The main job on the embedded defaults: set up, then bootstrap the reference CLIP on the
# built-in data (skipped when already current) and print its zero-shot accuracy table.
source "$(dirname "$0")/env.sh"
unlearn bootstrap "$@"
