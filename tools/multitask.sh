#!/bin/bash
# Multi-task (issue 19), notebook 06 section 9: a cpu-tier model with and without its second task,
# trained on 10%, 30% and 100% of the Shapes training images (400, 1,200 and 4,000-image sets: 320,
# 960 and 3,200 train images), 2,000 steps (GAN) or 1,000 (diffusion) at batch 32, seed 0, one run after another on 2 threads
# (two runs side by side with one thread each were slower in all: 167 steps a minute together against
# 300 for one). Judged on the 4,000-image set's val captions (1,000) by the project's judge.
#   MODEL=gan (default): the contrastive term on D (--contrastive 1.0) -> measured-multitask.json
#   MODEL=diffusion:     the same UNet also reading captions back from images (--read $READ, default
#                        0.1) -> measured-two-way.json, with how well it reads (retrieval captioning)
# Writes runs/multitask/<model>-<fraction>-<variant>/ and .json, then the summary notebook 06 reads.
#   FRACTIONS="30 100" bash tools/multitask.sh   trains only those (COLLECT=0: no summary)
#   SEED=1 COLLECT=0 bash tools/multitask.sh        another seed: runs/multitask/<model>-<fraction>-<variant>-s1/
cd "$(dirname "$0")/.."
export T2I_TIER=cpu HF_HUB_OFFLINE=1
PY=.venv/bin/python
MODEL=${MODEL:-gan}
STEPS=${STEPS:-$([ "$MODEL" = diffusion ] && echo 1000 || echo 2000)}
READ=${READ:-0.1}
SEED=${SEED:-0}
SUFFIX=$([ "$SEED" = 0 ] || echo "-s$SEED")  # seed 0 keeps the names the summary reads
FRACTIONS=${FRACTIONS:-"10 30 100"}
case $MODEL in
  gan) VARIANT=contrastive FLAGS="--contrastive 1.0" OUT=measured-multitask.json ;;
  diffusion) VARIANT=two-way FLAGS="--read $READ" OUT=measured-two-way.json ;;
  *) echo "MODEL must be gan or diffusion, not $MODEL" >&2; exit 2 ;;
esac
BIG=$($PY -c "from t2i_helpers.data import shapes_dataset; print(shapes_dataset())")
one() {  # fraction images variant extra-flags...
  local frac=$1 images=$2 variant=$3; shift 3
  local data; data=$($PY -c "from t2i_helpers.data import shapes_dataset; print(shapes_dataset(images=$images))")
  local run="runs/multitask/$MODEL-$frac-$variant$SUFFIX" start; start=$(date +%s)
  $PY -m t2i_helpers train --model "$MODEL" --data "$data/images" "$data/annotations/captions_train.json" \
     --out "$run" --steps "$STEPS" --batch-size 32 --seed "$SEED" --tier cpu "$@" --no-progress --overwrite > "$run.log" 2>&1
  echo "train $MODEL $frac $variant seed $SEED $(( $(date +%s) - start )) s"
  $PY -m t2i_helpers evaluate "$run" --data "$BIG/images" "$BIG/annotations/captions_val.json" \
     --n 1000 --json --no-retrieval > "$run.json"
}
mkdir -p runs/multitask
for frac in $FRACTIONS; do
  images=$(( frac * 40 ))  # of the 4,000-image set
  one "$frac" "$images" plain
  # shellcheck disable=SC2086
  one "$frac" "$images" "$VARIANT" $FLAGS
done
[ "${COLLECT:-1}" = 1 ] || exit 0
# The results notebook 06 reads (it trains them itself only with RERUN_MULTITASK = True or in smoke mode).
$PY tools/multitask_summary.py "$MODEL" "$VARIANT" "$STEPS" "$OUT" "$BIG"
