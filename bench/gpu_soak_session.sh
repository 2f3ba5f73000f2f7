#!/usr/bin/env bash
# One GPU call: the serving soak of one shape, then (optionally) a short soak under compute-sanitizer's
# memcheck (a tiny Qwen3-MoE, bf16, 8 concurrent requests, cache 50% and 25%, streamed and segmented steps).
# The GPU image lacks the server's own dependencies (fastapi, uvicorn, pydantic-settings, openai): carry
# them as wheels in .whl (see the device README) and this installs them first.
#   SHAPE=qwen3 DEADLINE=400 SANITIZE=1 bash bench/gpu_soak_session.sh      (results under $OUT)
set -u
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, fastapi, openai; print('torch', torch.__version__, 'transformers', transformers.__version__)"
OUTDIR=${OUT:-bench/results}
timeout $(( ${DEADLINE:-400} + 90 )) python3 bench/serve_soak.py --shape ${SHAPE:-qwen3} --out $OUTDIR \
  --deadline ${DEADLINE:-400} ${SOAK_ARGS:-} 2>&1 | tee $OUTDIR/serve_soak_${SHAPE:-qwen3}.log | grep -v Warning | tail -60
if [ "${SANITIZE:-0}" = 1 ]; then
  mkdir -p $OUTDIR/memcheck
  timeout ${SANITIZE_S:-150} python3 bench/serve_soak.py --shape tiny --device cuda --dtype bfloat16 \
    --fractions 0.5,0.25 --policies none --steps streamed,segmented --concurrency 8 --requests 16 \
    --deadline $(( ${SANITIZE_S:-150} - 30 )) --start-timeout 120 --out $OUTDIR/memcheck \
    --server-wrapper "compute-sanitizer --tool memcheck --print-limit 50 --log-file $OUTDIR/memcheck/memcheck_%p.log" \
    2>&1 | tail -25
  echo "memcheck logs:"; for f in $OUTDIR/memcheck/memcheck_*.log; do echo "== $f"; tail -5 "$f"; done
  tar -czf $OUTDIR/memcheck.tar.gz -C $OUTDIR memcheck && rm -rf $OUTDIR/memcheck
fi
# the servers' logs as one file (what comes back from a device call is a few files)
if [ -d $OUTDIR/serve_soak_${SHAPE:-qwen3}_logs ]; then
  tar -czf $OUTDIR/serve_soak_${SHAPE:-qwen3}_logs.tar.gz -C $OUTDIR serve_soak_${SHAPE:-qwen3}_logs \
    && rm -rf $OUTDIR/serve_soak_${SHAPE:-qwen3}_logs
fi
