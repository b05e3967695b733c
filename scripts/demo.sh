#!/usr/bin/env bash
# Sets up (if needed) and runs the CPU demo: SFT -> RL -> eval on the demo-size tiny GLM (11-15 min).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
slide demo "$@"
