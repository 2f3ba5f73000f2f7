#!/usr/bin/env bash
# One GPU call (about 8 minutes) for coded expert copies (issue #17); everything under $OUT:
#  1. the GPU tests of the expert cache, its coded copies, the decode kernel and the coded bench
#     -> gpu_tests_coded.log
#  2. bench/coded_experts.py on one Qwen3-30B-A3B expert: the code's size, the decode per block length, the
#     cache's fill per expert with plain and coded copies -> coded_experts.{json,log}
#  3. DECODE=1: the twin's decode of $SHAPE (default qwen3-30b-a3b; bench/decode.py --routing twin:...,
#     $EVICTION, default lru) with `none`, `exact+2` and `oracle+1` at 50% and 25%, plain and with coded copies
#     (--coded), `exact+2` also after demand, plain and coded (variant coded-after-demand: both settings)
#     -> decode_${SHAPE//-/_}_coded_$EVICTION.{json,png,log} (POLICIES=, CODED=, AFTER=, FRACTIONS= override the
#     lists; TESTS=0 skips steps 1 and 2, BENCH=0 step 2; PROFILE=exact+2@0.5/coded,... profiles those
#     configurations after their runs: GPU idle and host sync time per step and why the copy engine idled,
#     in the JSON and the log; KEEP=1 also brings their traces back, gzipped, under traces/)
# Carry .whl (the test suite's and the server's dependencies) and .cache/data/mmlu/test (the predictors' prompts).
#   DECODE=1 EVICTION=lfu bash bench/gpu_coded_session.sh
#   DECODE=1 TESTS=0 SHAPE=deepseek-v2-lite POLICIES=none,exact+1,oracle+1 CODED=none,exact+1,oracle+1 \
#     AFTER=exact+1 bash bench/gpu_coded_session.sh                    # that twin has a one-ahead bank only
set -u
source bench/gpu_env.sh
OUTDIR=${OUT:-bench/results}
EVICTION=${EVICTION:-lru}
SHAPE=${SHAPE:-qwen3-30b-a3b}
TAG=${SHAPE//-/_}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [ "${TESTS:-1}" = 1 ]; then
  timeout ${TESTS_S:-150} python3 -m pytest -q -p no:cacheprovider -m gpu tests/engine/experts \
    tests/bench/test_coded_experts.py ${TESTS_EXTRA:-} > $OUTDIR/gpu_tests_coded.log 2>&1
  tail -3 $OUTDIR/gpu_tests_coded.log
  if [ "${BENCH:-1}" = 1 ]; then  # BENCH=0: the tests only
    timeout ${CODED_S:-120} python3 bench/coded_experts.py --out $OUTDIR > $OUTDIR/coded_experts.log 2>&1
    tail -c 600 $OUTDIR/coded_experts.log
  fi
fi
if [ "${DECODE:-0}" = 1 ]; then
  timeout ${DECODE_S:-400} python3 bench/decode.py --preset $SHAPE \
    --routing twin:bench/twins/twin_replay_$SHAPE.npz --prompts .cache/data/mmlu/test --work /tmp/work \
    --eviction $EVICTION --runs 3 --new-tokens 32 --collect-prompts 40 --samples 4000 --epochs 2 \
    --fractions ${FRACTIONS:-1.0,0.5,0.25} --policies ${POLICIES:-none,exact+2,oracle+1} --segmented= \
    --after-demand=${AFTER:-exact+2} --coded ${CODED:-none,exact+2,oracle+1} --batches= --no-plain --no-ablations \
    --no-profile ${PROFILE:+--profile-configs $PROFILE} ${KEEP:+--keep-traces $OUTDIR/traces} --deadline ${DEADLINE:-330} --out $OUTDIR 2>&1 | grep -v Warning \
    > $OUTDIR/decode_${TAG}_coded_$EVICTION.log  # the record lands under $OUTDIR as it goes
  tail -3 $OUTDIR/decode_${TAG}_coded_$EVICTION.log
  mv $OUTDIR/decode_${TAG}.json $OUTDIR/decode_${TAG}_coded_$EVICTION.json
  mv $OUTDIR/decode_${TAG}.png $OUTDIR/decode_${TAG}_coded_$EVICTION.png
fi
ls -la $OUTDIR
