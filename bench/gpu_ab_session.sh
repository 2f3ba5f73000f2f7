#!/usr/bin/env bash
# One GPU call that measures a change against the code before it, in the same call (issue #17): the GPU
# tests of this tree, then the same twin decode (bench/decode.py --routing twin:...) with the older tree's
# code and with this tree's, one after the other, under $OUT/old and $OUT/new (JSON, PNG, log).
# OLD is a folder holding the older tree's engine/, predictors/ and bench/ (its .py files; the twins and
# prompts are read from this tree), e.g. made here and carried:
#   mkdir -p .ab/old && git archive HEAD~1 engine predictors bench/*.py bench/decode_lib | tar -x -C .ab/old
#   OLD=.ab/old POLICIES=none,exact+2,oracle+1 CODED=exact+2,oracle+1 bash bench/gpu_ab_session.sh
# (carry .whl, .cache/data/mmlu/test and .ab). TESTS=0 skips the tests (TEST_PATHS: which); SHAPE, EVICTION (default lfu),
# FRACTIONS (default 0.5), POLICIES, CODED, AFTER (default none), DEADLINE (per tree, default 150 s). HOSTPATH=1
# then times this tree's cache calls with their CUDA side (bench/host_path_cost.py --device cuda ->
# host_path_policies_cuda.json, host_path_cuda.log). The old tree needs its tokenizer asset (engine/model/assets/
# tokenizer.json); the model and predictor weights can be left out to save carry space.
set -u
source bench/gpu_env.sh
OUTDIR=${OUT:-bench/results}
SHAPE=${SHAPE:-qwen3-30b-a3b}
REPO=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [ "${TESTS:-1}" = 1 ]; then
  timeout ${TESTS_S:-150} python3 -m pytest -q -p no:cacheprovider -m gpu ${TEST_PATHS:-tests/engine tests/predictors tests/bench} \
    > $OUTDIR/gpu_tests.log 2>&1
  tail -1 $OUTDIR/gpu_tests.log
fi
for side in old new; do
  root=$REPO
  [ $side = old ] && root=$(cd "${OLD:?OLD: the older tree}" && pwd)
  mkdir -p $OUTDIR/$side
  (cd $root && PYTHONPATH=$root${SITE:+:$SITE} timeout $(( ${DEADLINE:-150} + 90 )) python3 bench/decode.py \
    --preset $SHAPE --routing twin:$REPO/bench/twins/twin_replay_$SHAPE.npz --prompts $REPO/.cache/data/mmlu/test \
    --work /tmp/work_$side --eviction ${EVICTION:-lfu} --runs 3 --new-tokens 32 --collect-prompts 40 --samples 4000 \
    --epochs 2 --fractions ${FRACTIONS:-0.5} --policies ${POLICIES:-none,exact+2,oracle+1} --segmented= \
    --after-demand=${AFTER:-} --coded ${CODED:-exact+2,oracle+1} --batches= --no-plain --no-ablations --no-profile \
    --deadline ${DEADLINE:-150} --out $OUTDIR/$side 2>&1 | grep -v Warning > $OUTDIR/$side/decode.log)
  grep "tok/s" $OUTDIR/$side/decode.log | cut -c1-120
  grep -o "host ms a token.*" $OUTDIR/$side/decode.log | cut -c1-200
done
if [ "${HOSTPATH:-0}" = 1 ]; then  # the cache's calls with their CUDA side, this tree (about a minute)
  timeout ${HOSTPATH_S:-120} python3 bench/host_path_cost.py --device cuda --policies ${HOSTPATH_POLICIES:-none,oracle+1,exact+2} \
    --out $OUTDIR > $OUTDIR/host_path_cuda.log 2>&1
  tail -4 $OUTDIR/host_path_cuda.log
fi
ls -la $OUTDIR/old $OUTDIR/new
