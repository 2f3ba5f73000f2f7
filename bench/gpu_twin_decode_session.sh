#!/usr/bin/env bash
# One GPU call: twin-replayed decode of one shape (issue #21's table, issue #17's baseline), then optionally
# the same sweep with LFU eviction and the GPU tests of the eviction orders. Everything under $OUT.
#  1. GPUTESTS=1: the GPU tests of the cache and the decode paths (LFU included) -> gpu_tests.log
#  2. bench/decode.py --routing twin:bench/twins/twin_replay_$SHAPE.npz with $DECODE_ARGS -> decode_$SHAPE*.json/.log
#     HYBRID=none,oracle+1: those policies also with hybrid misses (segmented steps, MOE_HYBRID_MISSES)
#     DECODE_EXTRA="--no-plain --no-ablations": without the plain forward and the eager / torch-GEMV runs
#     FRACTIONS=1.0,0.25: only those cache sizes (default 1.0,0.75,0.5,0.25; batch 8 runs at 1.0 and 0.5 regardless)
#     (default policies: none, exact and the twin's lookahead predictors 1 and 2 MoE layers ahead (skipped when
#     the artefact has none: train_twin --lookahead), oracle and the oracle 1 and 2 ahead, overprovision; POLICIES=)
#  3. LFU=1: the batch-1 sweep again with --eviction lfu -> decode_${SHAPE}_lfu.json/.log (LFU_BATCHES=8: and
#     the batch-8 runs at 100% and 50%; LFU_POLICIES=none,exact+1: other policies than none,exact)
# Carry .whl (the server's dependencies) and .cache/data/mmlu/test (the real-shape predictors' prompts).
#   SHAPE=deepseek-v2-lite GPUTESTS=1 LFU=1 DEADLINE=200 bash bench/gpu_twin_decode_session.sh
set -u
source bench/gpu_env.sh
OUTDIR=${OUT:-bench/results}
SHAPE=${SHAPE:-deepseek-v2-lite}
TAG=${SHAPE//-/_}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# the artefact this call replays: the committed one, or ARTEFACT= (e.g. .cache/twin_out/twin_replay_$SHAPE.npz,
# which bench/gpu_twin_session.sh leaves on a warm device machine for the call after it)
ARTEFACT=${ARTEFACT:-bench/twins/twin_replay_$SHAPE.npz}
python3 -c "import json; m = json.load(open('${ARTEFACT%.npz}.json')); print('replaying', '$ARTEFACT', 'twin', m['twin_fingerprint'][:16], m['tokens'], 'tokens')" || exit 1
if [ "${GPUTESTS:-0}" = 1 ]; then
  timeout ${GPUTESTS_S:-200} python3 -m pytest -q -p no:cacheprovider -m gpu tests/engine/experts tests/engine/runner \
    > $OUTDIR/gpu_tests.log 2>&1
  tail -3 $OUTDIR/gpu_tests.log
fi
COMMON="--preset $SHAPE --routing twin:$ARTEFACT --prompts .cache/data/mmlu/test --work /tmp/work"
DECODE_ARGS=${DECODE_ARGS:---runs 3 --new-tokens 32 --collect-prompts 40 --samples 4000 --epochs 2 \
  --fractions ${FRACTIONS:-1.0,0.75,0.5,0.25} --policies ${POLICIES:-none,exact,exact+1,exact+2,oracle,oracle+1,oracle+2,overprovision} --segmented none,overprovision ${HYBRID:+--hybrid $HYBRID} --batches 8 \
  --plain-tokens 8 --no-profile --deadline ${DEADLINE:-300} ${DECODE_EXTRA:-}}
timeout ${DECODE_S:-420} python3 bench/decode.py $COMMON $DECODE_ARGS --out /tmp/decode_lru 2>&1 | grep -v Warning \
  > $OUTDIR/decode_${TAG}_twin.log
tail -4 $OUTDIR/decode_${TAG}_twin.log
cp /tmp/decode_lru/decode_${TAG}.json $OUTDIR/decode_${TAG}_twin.json
cp /tmp/decode_lru/decode_${TAG}.png $OUTDIR/decode_${TAG}_twin.png 2>/dev/null
if [ "${LFU:-0}" = 1 ]; then
  timeout ${LFU_S:-240} python3 bench/decode.py $COMMON --eviction lfu --runs 3 --new-tokens 32 --collect-prompts 40 \
    --samples 4000 --epochs 2 --fractions 0.5,0.25 --policies ${LFU_POLICIES:-none,exact} --segmented none --batches "${LFU_BATCHES:-}" --no-plain \
    --no-profile --deadline ${LFU_DEADLINE:-150} --out /tmp/decode_lfu 2>&1 | grep -v Warning > $OUTDIR/decode_${TAG}_lfu.log
  tail -3 $OUTDIR/decode_${TAG}_lfu.log
  cp /tmp/decode_lfu/decode_${TAG}.json $OUTDIR/decode_${TAG}_lfu.json
fi
ls -la $OUTDIR
