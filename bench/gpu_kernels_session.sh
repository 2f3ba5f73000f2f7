#!/usr/bin/env bash
# One GPU call (about 5 minutes) for issue #17's kernel-side questions; everything under $OUT:
#  1. the GPU tests of the kernels and the expert cache (the predictor kernels', the slot kernels' one
#     configuration per shape, hybrid misses) -> gpu_tests_kernels.log
#  2. bench/predictor_cost.py: the predictor kernels against torch's path per layer, by width (the 5 us
#     target) -> predictor_cost.{json,png,log}
#  3. bench/hybrid_layer.py: one layer's misses split between the host and PCIe, every split timed
#     -> hybrid_layer.{json,png,log}
# Carry .whl (the test suite's conftest and fixtures import the server's dependencies).
#   bash bench/gpu_kernels_session.sh
set -u
source bench/gpu_env.sh
OUTDIR=${OUT:-bench/results}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout ${TESTS_S:-240} python3 -m pytest -q -p no:cacheprovider -m gpu tests/engine/kernels tests/engine/experts \
  > $OUTDIR/gpu_tests_kernels.log 2>&1
tail -3 $OUTDIR/gpu_tests_kernels.log
timeout ${PREDICTOR_S:-200} python3 bench/predictor_cost.py --out $OUTDIR > $OUTDIR/predictor_cost.log 2>&1
tail -4 $OUTDIR/predictor_cost.log
timeout ${HYBRID_S:-150} python3 bench/hybrid_layer.py --out $OUTDIR > $OUTDIR/hybrid_layer.log 2>&1
tail -4 $OUTDIR/hybrid_layer.log
ls -la $OUTDIR
