#!/bin/bash
# ADA / DiffAugment / none on a 500-image Shapes training set (cpu-tier GAN, 1500 steps, batch 32, seed 0),
# judged on the 4,000-image set's val captions (1,000) by the project's judge.
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 T2I_TIER=cpu HF_HUB_OFFLINE=1
PY=.venv/bin/python
SMALL=$($PY -c "from t2i_helpers.data import shapes_dataset; print(shapes_dataset(images=625))")
BIG=$($PY -c "from t2i_helpers.data import shapes_dataset; print(shapes_dataset())")
echo "small $SMALL big $BIG"
for aug in none diffaugment ada; do
  start=$(date +%s)
  $PY -m t2i_helpers train --model gan --data $SMALL/images $SMALL/annotations/captions_train.json \
     --out runs/ada500/$aug --steps 1500 --batch-size 32 --seed 0 --tier cpu --augment $aug --no-progress --overwrite
  echo "train $aug $(( $(date +%s) - start )) s"
  $PY -m t2i_helpers evaluate runs/ada500/$aug --data $BIG/images $BIG/annotations/captions_val.json --n 1000 --json --no-retrieval > runs/ada500/$aug.json
  echo "eval $aug done $(( $(date +%s) - start )) s"
done
echo finished
