#!/usr/bin/env bash
# Sets up (if needed) and runs the CPU demo: SFT -> RL -> eval on the demo-size tiny GLM (8-15 min, by the machine's hour).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
slide demo "$@"
