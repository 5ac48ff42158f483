#!/bin/bash
# Multi-task (issue 19): the cpu-tier GAN with and without the contrastive term (weight 1.0), trained on
# 10%, 30% and 100% of the Shapes training images (400, 1,200 and 4,000-image sets: 320, 960 and 3,200
# train images), 2,000 steps at batch 32, seed 0, one run after another on 2 threads (two runs side by
# side with one thread each were slower in all: 167 steps a minute together against 300 for one).
# Judged on the 4,000-image set's val captions (1,000) by the project's judge.
# Writes runs/multitask/<fraction>-<variant>/ and .json, then the summary notebook 06 reads.
#   FRACTIONS="30 100" bash tools/multitask_gan.sh   trains only those (COLLECT=0: no summary)
cd "$(dirname "$0")/.."
export T2I_TIER=cpu HF_HUB_OFFLINE=1
PY=.venv/bin/python
STEPS=${STEPS:-2000}
FRACTIONS=${FRACTIONS:-"10 30 100"}
BIG=$($PY -c "from t2i_helpers.data import shapes_dataset; print(shapes_dataset())")
one() {  # fraction images variant extra-flags...
  local frac=$1 images=$2 variant=$3; shift 3
  local data; data=$($PY -c "from t2i_helpers.data import shapes_dataset; print(shapes_dataset(images=$images))")
  local start; start=$(date +%s)
  $PY -m t2i_helpers train --model gan --data "$data/images" "$data/annotations/captions_train.json" \
     --out "runs/multitask/$frac-$variant" --steps "$STEPS" --batch-size 32 --seed 0 --tier cpu "$@" \
     --no-progress --overwrite > "runs/multitask/$frac-$variant.log" 2>&1
  echo "train $frac $variant $(( $(date +%s) - start )) s"
  $PY -m t2i_helpers evaluate "runs/multitask/$frac-$variant" --data "$BIG/images" "$BIG/annotations/captions_val.json" \
     --n 1000 --json --no-retrieval > "runs/multitask/$frac-$variant.json"
}
mkdir -p runs/multitask
for frac in $FRACTIONS; do
  images=$(( frac * 40 ))  # of the 4,000-image set
  one "$frac" "$images" plain
  one "$frac" "$images" contrastive --contrastive 1.0
done
[ "${COLLECT:-1}" = 1 ] || exit 0
# The results notebook 06 reads (it trains them itself only with RERUN_MULTITASK = True or in smoke mode).
$PY - "$STEPS" <<'PY'
import json, os, platform, subprocess, sys
from pathlib import Path
import numpy as np
from t2i_helpers.files import atomic_write_bytes
from t2i_helpers.train import load_run, read_metrics, shipped_dir

rows = []
for percent in (10, 30, 100):
    for variant in ("plain", "contrastive"):
        folder = Path(f"runs/multitask/{percent}-{variant}")
        report = json.loads(Path(f"{folder}.json").read_text())
        acc = report["attribute_accuracy"]
        held = acc.get("held_out", {"all": float("nan"), "n": 0})
        run = load_run(folder)
        rows.append({"percent": percent, "variant": variant, "all_val": acc["val"]["all"], "n_val": acc["val"]["n"],
                     "all_held_out": held["all"], "n_held_out": held["n"], "fid_proxy": report["fid_proxy"],
                     "images_per_s": float(np.median(read_metrics(folder / "metrics.csv")["images_per_s"])),
                     "parameters": sum(p.numel() for p in run.model.parameters())})
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
doc = {"rows": rows, "steps": int(sys.argv[1]),
       "machine": f"tools/multitask_gan.sh at {commit}, {cpu}, 2 cores, "
                  + os.environ.get("RUN_NOTE", "one run after another, 2 threads"),
       "command": "bash tools/multitask_gan.sh"}
atomic_write_bytes(shipped_dir("cpu") / "measured-multitask.json", (json.dumps(doc, indent=1) + "\n").encode())
print(json.dumps(doc))
PY
echo finished
