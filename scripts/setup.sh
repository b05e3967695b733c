#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs SLIDE with pinned dependencies. Idempotent.
# torch is pinned to 2.13.0, the CPU wheel on this kind of machine; install it first so that no
# other package pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
# bubblewrap sandboxes model-written code (code rewards, the python tool); Debian package, needs root or sudo.
if ! command -v bwrap >/dev/null 2>&1; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq bubblewrap >/dev/null
fi
# chromium: the browser tests/test_view.py drives through Playwright (Playwright's own browser download cannot run here)
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --disable-pip-version-check --no-cache-dir torch==2.13.0
python -m pip install -q --disable-pip-version-check --no-cache-dir -e ".[test]"
