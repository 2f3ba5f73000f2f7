#!/usr/bin/env bash
# One GPU call for the serving path, results under $OUT (few files: a device call brings back at most 8):
#  0. GPUTESTS=1: every GPU-marked test of the engine, predictors and benchmarks -> gpu_tests.log
#  1. MEMCHECK=1: the serving-shape GPU tests (8-row batches padded as rows join and leave, cache 50% and
#     25%, streamed and segmented steps) under compute-sanitizer's memcheck -> memcheck_serving_shapes.log
#  2. EXACT=1: a float32 soak of the tiny Qwen3-MoE on the GPU, where batched greedy tokens must equal each
#     prompt served alone -> serve_soak_tiny.json (+ its logs, tarred)
#  3. GRAMMAR=1: bench/grammar_cost.py, the cost of grammar-constrained decoding at batch 1 and 8 (with
#     GRAMMAR_TOKENIZER, a tokenizer.json of Qwen3's vocabulary size) -> grammar_cost.json
#  4. the serving soak of SHAPE (qwen3 | deepseek) in what is left of TOTAL seconds -> serve_soak_SHAPE.*
# The GPU image lacks the server's own dependencies (fastapi, uvicorn, pydantic-settings, openai): carry
# them as wheels in .whl (see the device README) and this installs them first.
#   SHAPE=deepseek TOTAL=570 MEMCHECK=1 EXACT=1 SOAK_ARGS="--layers 8" bash bench/gpu_soak_session.sh
set -u
T0=$(date +%s)
source bench/gpu_env.sh
OUTDIR=${OUT:-bench/results}
SHAPE=${SHAPE:-qwen3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, fastapi, openai; print('torch', torch.__version__, 'transformers', transformers.__version__)"
if [ "${GPUTESTS:-0}" = 1 ]; then
  timeout ${GPUTESTS_S:-240} python3 -m pytest -q -p no:cacheprovider -m gpu tests/engine tests/predictors tests/bench \
    > $OUTDIR/gpu_tests.log 2>&1
  tail -3 $OUTDIR/gpu_tests.log
fi
if [ "${MEMCHECK:-0}" = 1 ]; then
  timeout ${MEMCHECK_S:-170} compute-sanitizer --tool memcheck --print-limit 50 \
    --log-file $OUTDIR/memcheck_serving_shapes.log \
    python3 -m pytest -q -p no:cacheprovider tests/engine/frontend/test_serving_shapes_gpu.py \
    -k "${MEMCHECK_K:-qwen3_moe and (cache50 or cache25) and not policies}" 2>&1 | tail -4
  echo "memcheck: $(grep -c 'Invalid\|Error' $OUTDIR/memcheck_serving_shapes.log) error lines;" \
    "$(grep 'ERROR SUMMARY' $OUTDIR/memcheck_serving_shapes.log)"
fi
if [ "${EXACT:-0}" = 1 ]; then
  timeout ${EXACT_S:-110} python3 bench/serve_soak.py --shape tiny --device cuda --dtype float32 \
    --fractions 0.5,0.25 --policies none --steps streamed,segmented --concurrency 1,8,32 --requests small \
    --deadline $(( ${EXACT_S:-110} - 25 )) --out $OUTDIR 2>&1 | grep -v Warning | tail -14
  tar -czf $OUTDIR/serve_soak_tiny_logs.tar.gz -C $OUTDIR serve_soak_tiny_logs serve_soak_tiny_build.log \
    serve_soak_tiny.png 2>/dev/null && rm -rf $OUTDIR/serve_soak_tiny_logs $OUTDIR/serve_soak_tiny_build.log \
    $OUTDIR/serve_soak_tiny.png
fi
if [ "${GRAMMAR:-0}" = 1 ]; then
  timeout ${GRAMMAR_S:-200} python3 bench/grammar_cost.py --out $OUTDIR \
    ${GRAMMAR_TOKENIZER:+--tokenizer $GRAMMAR_TOKENIZER} 2>&1 | grep -v Warning | tail -8
  tar -czf $OUTDIR/grammar_cost_logs.tar.gz -C $OUTDIR grammar_cost_server.log grammar_cost_build.log 2>/dev/null \
    && rm -f $OUTDIR/grammar_cost_server.log $OUTDIR/grammar_cost_build.log
fi
LEFT=$(( ${TOTAL:-560} - ($(date +%s) - T0) - 70 ))
DEADLINE=$(( ${DEADLINE:-480} < LEFT ? ${DEADLINE:-480} : LEFT ))
echo "soak of $SHAPE with a ${DEADLINE}s deadline"
timeout $(( DEADLINE + 60 )) python3 bench/serve_soak.py --shape $SHAPE --out $OUTDIR --deadline $DEADLINE \
  ${SOAK_ARGS:-} 2>&1 | tee $OUTDIR/serve_soak_$SHAPE.log | grep -v Warning | tail -50
# the servers' logs and the build log as one file
tar -czf $OUTDIR/serve_soak_${SHAPE}_logs.tar.gz -C $OUTDIR serve_soak_${SHAPE}_logs serve_soak_${SHAPE}_build.log \
  2>/dev/null && rm -rf $OUTDIR/serve_soak_${SHAPE}_logs $OUTDIR/serve_soak_${SHAPE}_build.log
ls $OUTDIR
