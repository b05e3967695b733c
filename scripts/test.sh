#!/usr/bin/env bash
# Sets up (if needed) and runs the whole test suite (~4 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest -q "$@"
