#!/usr/bin/env bash
# Side-by-side RL step time: `slide bench` vs TRL's GRPOTrainer (../shared/bench/trl_grpo.py), same model
# folder, same workload, one machine, run back to back so the ratio is meaningful on a noisy machine.
#   bash benchmarks/bench_vs_trl.sh [HIDDEN LAYERS LEN]     # default: 512 8 128 (the 25M model)
# TRL goes into its own venv (.venv-trl) so it never touches SLIDE's pinned dependencies. TRL's GRPOConfig turns
# gradient checkpointing on by default: the "grad-ckpt" SLIDE line is the memory-matched comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
HIDDEN=${1:-512}; LAYERS=${2:-8}; LEN=${3:-128}
SHARED=${SHARED:-../shared}
bash scripts/setup.sh
. benchmarks/bench_env.sh
ARGS="--prompts 8 --gens 8 --len $LEN --steps 5"
LOG="$OUT/h${HIDDEN}_l${LAYERS}_len${LEN}.log"
set -o pipefail
{
  echo "== slide bench fp32";  .venv/bin/slide bench --model "$MODEL" $ARGS --dtype fp32
  echo "== slide bench bf16";  .venv/bin/slide bench --model "$MODEL" $ARGS --dtype bf16
  echo "== slide bench bf16 compile";  .venv/bin/slide bench --model "$MODEL" $ARGS --dtype bf16 --compile
  echo "== slide bench bf16 compile grad-ckpt";  .venv/bin/slide bench --model "$MODEL" $ARGS --dtype bf16 --compile --grad-ckpt
  echo "== trl bf16";          peak_rss .venv-trl/bin/python "$SHARED/bench/trl_grpo.py" "$MODEL" $ARGS --bf16
  echo "== trl fp32";          peak_rss .venv-trl/bin/python "$SHARED/bench/trl_grpo.py" "$MODEL" $ARGS
} 2>&1 | tee "$LOG.full" | grep -E "^(==|bench:|phases|steps=|peak_rss_mb=|error|Traceback)" | tee "$LOG"
