#!/usr/bin/env bash
# One GPU call: the GPU tests of the decode path, a kernel profile of the Qwen3 shape, and the engine's
# logits against transformers at full width (float32). Results under $OUT.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
timeout ${TEST_S:-300} python -m pytest -q -p no:cacheprovider ${TESTS:-tests/engine/runner/test_decode_graphs_gpu.py tests/engine/prefetch/test_prefetch_gpu.py tests/engine/kernels/test_fused_rope_gpu.py tests/engine/kernels/test_fused_router_gpu.py tests/engine/experts/test_pinned_gpu.py} 2>&1 | tail -25
timeout 150 python bench/profile_step.py --preset qwen3-30b-a3b --layers 8 --out $OUT 2>&1 | grep -v Warning | head -60
for p in ${AGREE:-mixtral-8x7b qwen3-30b-a3b}; do
  timeout 150 python bench/agreement.py --preset $p --layers 4 --dtype float32 --out $OUT 2>&1 | grep -v Warning | tail -3
done
