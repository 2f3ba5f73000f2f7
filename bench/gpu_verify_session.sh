#!/usr/bin/env bash
# One GPU call that checks a change which must not change behaviour (issue #16's restructuring):
#  1. every GPU-marked test -> gpu_tests.log
#  2. a short bench/decode.py run of the tree before the change (OLD_TREE, e.g. `git archive` of the
#     previous commit unpacked under .cache/old_tree) and of this tree, one after the other on the same
#     GPU, compared by bench/compare_decode.py -> decode_old.json, decode_new.json, decode_compare.json
#  3. GRAMMAR=1: bench/grammar_cost.py (GRAMMAR_TOKENIZER: a tokenizer.json of Qwen3's vocabulary size);
#     GRAMMAR_PROFILE=1 then bench/grammar_profile.py on the same checkpoint (where the step's time goes)
# The GPU image lacks the server's dependencies: carry them as wheels in .whl (see bench/gpu_soak_session.sh).
#   OLD_TREE=.cache/old_tree PROMPTS=.cache/data/mmlu/test GRAMMAR=1 bash bench/gpu_verify_session.sh
set -u
source bench/gpu_env.sh
BASE=$SITE
OUTDIR=${OUT:-bench/results}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
PYTHONPATH=$PWD:$BASE timeout ${TEST_S:-240} python3 -m pytest -q -p no:cacheprovider -m gpu tests/engine tests/predictors tests/bench \
  > $OUTDIR/gpu_tests.log 2>&1
tail -3 $OUTDIR/gpu_tests.log
DECODE_ARGS=${DECODE_ARGS:---preset deepseek-v2-lite --runs 3 --new-tokens 32 --collect-prompts 40 --samples 4000 \
  --epochs 2 --fractions 1.0,0.5,0.25 --policies none,exact,overprovision --segmented none --batches 8 --no-plain \
  --no-profile --prefill-tokens 128 --deadline ${DECODE_DEADLINE:-90}}
PROMPTS=$(realpath ${PROMPTS:-.cache/data/mmlu/test})
if [ -n "${OLD_TREE:-}" ]; then
  (cd $OLD_TREE && PYTHONPATH=$PWD:$BASE timeout ${DECODE_S:-200} python3 bench/decode.py $DECODE_ARGS --prompts $PROMPTS \
     --out /tmp/decode_old --work /tmp/work_old 2>&1 | grep -v Warning | tail -4)
  cp /tmp/decode_old/decode_*.json $OUTDIR/decode_old.json
fi
PYTHONPATH=$PWD:$BASE timeout ${DECODE_S:-200} python3 bench/decode.py $DECODE_ARGS --prompts $PROMPTS --out /tmp/decode_new \
  --work /tmp/work_new 2>&1 | grep -v Warning | tail -4
cp /tmp/decode_new/decode_*.json $OUTDIR/decode_new.json
if [ -n "${OLD_TREE:-}" ]; then
  PYTHONPATH=$PWD:$BASE python3 bench/compare_decode.py $OUTDIR/decode_old.json $OUTDIR/decode_new.json \
    --out $OUTDIR/decode_compare.json
fi
if [ "${GRAMMAR:-0}" = 1 ]; then
  PYTHONPATH=$PWD:$BASE timeout ${GRAMMAR_S:-200} python3 bench/grammar_cost.py --out $OUTDIR \
    ${GRAMMAR_TOKENIZER:+--tokenizer $GRAMMAR_TOKENIZER} 2>&1 | grep -v Warning | tail -4
  rm -f $OUTDIR/grammar_cost_server.log $OUTDIR/grammar_cost_build.log
  if [ "${GRAMMAR_PROFILE:-0}" = 1 ]; then  # where the constrained step's time goes, on the checkpoint just built
    CKPT=$(ls -d .cache/grammar_cost/grammar-qwen3-l*-* | head -1)
    PYTHONPATH=$PWD:$BASE timeout ${GRAMMAR_PROFILE_S:-150} python3 bench/grammar_profile.py --checkpoint $CKPT \
      --device cuda --out $OUTDIR 2>&1 | grep -v Warning | tail -30
  fi
fi
ls $OUTDIR
