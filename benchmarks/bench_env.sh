# Sourced by the benchmark scripts: the TRL venv (.venv-trl) and the shared tiny Qwen2 model folder.
# Needs HIDDEN, LAYERS, SHARED; sets OUT and MODEL.
if [ ! -x .venv-trl/bin/python ]; then
  python3 -m venv .venv-trl
  .venv-trl/bin/pip install -q torch==2.13.0 transformers==5.24.0 trl==1.16.0 datasets accelerate
fi
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
MODEL="$OUT/model_h${HIDDEN}_l${LAYERS}"
[ -f "$MODEL/config.json" ] || .venv/bin/python "$SHARED/bench/tiny_model.py" "$MODEL" --hidden "$HIDDEN" --layers "$LAYERS"
