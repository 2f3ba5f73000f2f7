#!/usr/bin/env bash
# One GPU call (about 10 minutes on Qwen3, 5 on DeepSeek) for issue #17's predictor-cost target (at most
# 5 us per layer): the one-launch predictor kernel (engine/kernels/fused_predictor.py, MOE_PREDICTOR_KERNEL)
# tested, timed and run in decode steps. Everything under $OUT:
#  1. its GPU tests and the decode-graph tests with it on (tokens equal the reference), and those of
#     MOE_LOOKAHEAD_AFTER_DEMAND
#     -> gpu_tests_predictor_kernel.log
#  2. bench/predictor_cost.py: torch's path against the kernel per layer, by width -> predictor_cost.{json,png,log}
#  3. the twin of SHAPE (default Qwen3) decoded at 100% and 50% with none and exact (exact at 100% too: what
#     predicting costs), once with torch's predictors and once with the kernel (--predictor-kernel), each
#     run's exact against its own none -> decode_<shape>_predictor_{torch,kernel}.{json,log}; IMPLS="kernel torch
#     kernel+overlap torch+overlap": also with the predictors on a parallel branch of streamed steps
#     (--predictor-overlap, MOE_PREDICTOR_OVERLAP) -> decode_<shape>_predictor_<impl>.{json,log}
# DEADLINE counts from each decode process's start (the model, traces and predictors take 30 s on DeepSeek,
# 100 s on Qwen3). Carry .whl and .cache/data/mmlu/test.
#   bash bench/gpu_predictor_kernel_session.sh
#   SHAPE=deepseek-v2-lite DEADLINE=75 PREDICTOR_ARGS="--archs 2 --rows 1 --impls torch,kernel,kernel@256/4" bash ...
set -u
source bench/gpu_env.sh
OUTDIR=${OUT:-bench/results}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout ${TESTS_S:-150} python3 -m pytest -q -p no:cacheprovider -m gpu tests/engine/kernels/test_fused_predictor.py \
  tests/engine/runner/test_decode_graphs_gpu.py -k "${TESTS_K:-predictor_kernel or fused_predictor or test_graphs_with_prefetch_policies or lookahead_copies_after or parallel_branch}" \
  > $OUTDIR/gpu_tests_predictor_kernel.log 2>&1
tail -3 $OUTDIR/gpu_tests_predictor_kernel.log
timeout ${PREDICTOR_S:-120} python3 bench/predictor_cost.py --out $OUTDIR ${PREDICTOR_ARGS:-} > $OUTDIR/predictor_cost.log 2>&1
grep "exact" $OUTDIR/predictor_cost.log | cut -c12- | head -24
SHAPE=${SHAPE:-qwen3-30b-a3b}
TAG=${SHAPE//-/_}
COMMON="--preset $SHAPE --routing twin:bench/twins/twin_replay_$SHAPE.npz --prompts .cache/data/mmlu/test --work /tmp/work
  --runs 3 --new-tokens 32 --collect-prompts 40 --samples 4000 --epochs 2 --fractions ${FRACTIONS:-1.0,0.5}
  --policies none,exact --full-cache-policies exact --segmented none --batches=${BATCHES:-} --no-plain --no-ablations --no-profile --deadline ${DEADLINE:-200}"
for impl in ${IMPLS:-kernel torch}; do
  flag=""
  case $impl in kernel*) flag=--predictor-kernel ;; esac
  case $impl in *+overlap) flag="$flag --predictor-overlap" ;; *) flag="$flag --no-predictor-overlap" ;; esac
  timeout ${DECODE_S:-240} python3 bench/decode.py $COMMON $flag --out /tmp/decode_$impl 2>&1 | grep -v Warning \
    > $OUTDIR/decode_${TAG}_predictor_${impl/+/_}.log
  grep "@" $OUTDIR/decode_${TAG}_predictor_${impl/+/_}.log | cut -c1-150
  cp /tmp/decode_$impl/decode_$TAG.json $OUTDIR/decode_${TAG}_predictor_${impl/+/_}.json
done
ls -la $OUTDIR
