#!/usr/bin/env bash
# One GPU call that trains routing twins (issue #21) side by side on the one GPU: each SHAPES entry runs
# bench/train_twin.py in its own process (the twins are small; their kernels interleave), with its own
# DEADLINE, then what each run wrote is packed into twin_<shape>.tgz under $OUT (a call brings back only a
# few files, each under 16 MiB: the replay arrays are capped at 12 MiB), beside each run's JSON.
#   python bench/twin_data.py --dst .cache/twin_data      # once, here; then carry .cache/twin_data and .whl
# The carried tree must stay under 64 MiB: training needs neither the openai nor the llguidance wheel, so
# move .whl/openai-* and .whl/llguidance-* aside for this call (the tree, .whl and the data are ~70 MB).
#   SHAPES="deepseek-v2-lite:3:--table3 phi-mini-moe:3 qwen3-30b-a3b:3" DEADLINE=540 bash bench/gpu_twin_session.sh
# An entry is shape:train-minutes[:extra flags, joined by +, e.g. --lookahead+1,2]. WORKERS: cache-replay processes and torch
# threads per run (default: the cores shared out, so the runs do not oversubscribe the CPU).
set -u
source bench/gpu_env.sh
OUTDIR=${OUT:-bench/results}
DEADLINE=${DEADLINE:-540}
DATA=${DATA:-.cache/twin_data}
WORK=/tmp/twin_runs
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
n=$(echo ${SHAPES} | wc -w)
workers=${WORKERS:-$(( $(nproc) / n ))}
pids=()
for entry in ${SHAPES}; do
  IFS=: read -r shape minutes extra <<<"$entry"
  mkdir -p $WORK/$shape
  OMP_NUM_THREADS=$workers MKL_NUM_THREADS=$workers timeout $((DEADLINE + 30)) python3 bench/train_twin.py --shape $shape --train-minutes $minutes \
    --deadline $DEADLINE --data $DATA --workers $workers --out $WORK/$shape --replay-max-mb 12 ${extra//+/ } \
    > $WORK/$shape/stdout.log 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait $p; echo "run $p: rc $?"; done
for entry in ${SHAPES}; do
  shape=${entry%%:*}
  tail -2 $WORK/$shape/stdout.log
  cp $WORK/$shape/train_twin_$shape.json $OUTDIR/ 2>/dev/null
  tar czf $OUTDIR/twin_$shape.tgz -C $WORK $shape
  # kept on the device machine for the next call (an ignored path survives between calls of a warm machine):
  # ARTEFACT=.cache/twin_out/twin_replay_$shape.npz bash bench/gpu_twin_decode_session.sh replays it at once
  mkdir -p .cache/twin_out && cp $WORK/$shape/twin_replay_$shape.{npz,json} .cache/twin_out/ 2>/dev/null
done
ls -la $OUTDIR
