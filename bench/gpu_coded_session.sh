#!/usr/bin/env bash
# One GPU call (about 4 minutes) for coded expert copies (issue #17); everything under $OUT:
#  1. the GPU tests of the expert cache, its coded copies, the decode kernel and the coded bench
#     -> gpu_tests_coded.log
#  2. bench/coded_experts.py on one Qwen3-30B-A3B expert: the code's size, the decode per block length, the
#     cache's fill per expert with plain and coded copies -> coded_experts.{json,log}
# Carry .whl (the test suite's conftest and fixtures import the server's dependencies).
#   bash bench/gpu_coded_session.sh
set -u
source bench/gpu_env.sh
OUTDIR=${OUT:-bench/results}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout ${TESTS_S:-240} python3 -m pytest -q -p no:cacheprovider -m gpu tests/engine/experts tests/engine/kernels \
  tests/bench/test_coded_experts.py > $OUTDIR/gpu_tests_coded.log 2>&1
tail -3 $OUTDIR/gpu_tests_coded.log
timeout ${CODED_S:-200} python3 bench/coded_experts.py --out $OUTDIR > $OUTDIR/coded_experts.log 2>&1
tail -2 $OUTDIR/coded_experts.log
ls -la $OUTDIR
