#!/usr/bin/env bash
# The full ckpt-chaos sweeps of the kit's checkpoint writes: a training command killed at every file
# event under its output folder, in each mode (before, torn, term), resumed and compared with a
# fault-free run. tests/test_chaos.py runs a 6-point subset of the first in CI.
#
#   pip install ckpt-chaos==0.1.8          # in the test extra: pip install -e ".[test]"
#   benchmarks/chaos.sh [WORK_DIR]         # JOBS=2 by default; PARTS picks the sweeps (below)
#
# PARTS (default "keep-all keep-2"):
#   keep-all  tests/chaos_train.py: one fold of cv.train_folds, 4 epochs of 6 steps, a checkpoint every
#             3 steps and at each epoch end, every checkpoint kept (LOST_WORK judged); ~160 points
#   keep-2    the same with keep=2 (pruning at every save). ckpt-chaos cannot track checkpoints the run
#             deletes itself, so it judges HARD_FAIL and SILENT_DIVERGENCE only, not LOST_WORK
#   glacier   a glacier fine-tune member (the notebook's own setup: crops, band statistics, U-Net, loss,
#             per-pixel out-of-fold maps) on a 64 px demo, 3 epochs, a checkpoint every 6 steps, every
#             checkpoint kept; GLACIER_POINTS crash points (default 30: each point's folder holds six
#             U-Net checkpoints of ~75 MB, about 15 GB in all)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-ckpt-chaos-runs/$(date +%Y%m%d-%H%M%S)}
JOBS=${JOBS:-2}
PY=${PYTHON:-python}
PARTS=${PARTS:-keep-all keep-2}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$WORK"
common=(--modes before,torn,term --jobs "$JOBS" --timeout 300 --grace 20
        --step-regex 'chaos: resumed from step (\d+)' --result-file '{out}/result.json')
all_kept=(--checkpoint-glob '{out}/run/checkpoints/fold0/step-*.ckpt' --ckpt-ignore-size
          --fail-on HARD_FAIL,SILENT_DIVERGENCE,LOST_WORK,CONTROL_FAIL)
for part in $PARTS; do
  case "$part" in
    keep-all)
      echo "== every checkpoint kept (LOST_WORK judged) =="
      "$PY" -m ckpt_chaos run --work "$WORK/keep-all" "${common[@]}" --max-points 1000 "${all_kept[@]}" \
          -- "$PY" tests/chaos_train.py '{out}' ;;
    keep-2)
      echo "== keep=2: pruning at every save =="
      "$PY" -m ckpt_chaos run --work "$WORK/keep-2" "${common[@]}" --max-points 1000 \
          --fail-on HARD_FAIL,SILENT_DIVERGENCE,CONTROL_FAIL -- "$PY" tests/chaos_train.py '{out}' --keep 2 ;;
    glacier)
      echo "== glacier: a U-Net member of the fine-tune, every checkpoint kept =="
      [ -d "$WORK/glacier-demo/glacierhack" ] || "$PY" -m kagglekit_nb demo glacier --out "$WORK/glacier-demo" --tile-size 64
      demo=$(cd "$WORK/glacier-demo" && pwd)
      "$PY" -m ckpt_chaos run --work "$WORK/glacier" "${common[@]}" --max-points "${GLACIER_POINTS:-30}" "${all_kept[@]}" \
          -- "$PY" tests/chaos_train.py '{out}' --glacier "$demo" --encoder efficientnet-b0 --epochs 3 --every 6 ;;
    *) echo "unknown part '$part': use keep-all, keep-2 or glacier" >&2; exit 2 ;;
  esac
done
