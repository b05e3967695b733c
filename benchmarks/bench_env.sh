# Sourced by the benchmark scripts: the TRL venv (.venv-trl) and the shared tiny Qwen2 model folder.
# Needs HIDDEN, LAYERS, SHARED; sets OUT and MODEL, and defines peak_rss.
if [ ! -x .venv-trl/bin/python ]; then
  python3 -m venv .venv-trl
  .venv-trl/bin/pip install -q torch==2.13.0 transformers==5.24.0 trl==1.16.0 datasets accelerate
fi
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
MODEL="$OUT/model_h${HIDDEN}_l${LAYERS}"
[ -f "$MODEL/config.json" ] || .venv/bin/python "$SHARED/bench/tiny_model.py" "$MODEL" --hidden "$HIDDEN" --layers "$LAYERS"
# TRL's script prints no memory figure: `peak_rss CMD ...` runs CMD and prints its peak RSS (the same
# ru_maxrss that `slide bench` reports for itself) as `peak_rss_mb=N`, with nothing beyond python3.
peak_rss() {
  python3 -c 'import resource, subprocess, sys
rc = subprocess.call(sys.argv[1:])
print(f"peak_rss_mb={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f}", flush=True)
sys.exit(rc)' "$@"
}
