#!/usr/bin/env bash
# The full ckpt-chaos sweep of the kit's checkpoint writes: tests/chaos_train.py (one fold of
# cv.train_folds, 4 epochs of 6 steps, a checkpoint every 3 steps and at each epoch end) killed at
# every file event under its output folder, in each mode (before, torn, term), resumed and compared
# with a fault-free run. tests/test_chaos.py runs a 6-point subset of the same in CI.
#
#   pip install ckpt-chaos==0.1.8          # in the test extra: pip install -e ".[test]"
#   benchmarks/chaos.sh [WORK_DIR]         # JOBS=2 by default; about 160 crash points
#
# Second part: the same with keep=2 (pruning at every save). ckpt-chaos cannot track checkpoints the
# run deletes itself, so that sweep judges HARD_FAIL and SILENT_DIVERGENCE only, not LOST_WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-ckpt-chaos-runs/$(date +%Y%m%d-%H%M%S)}
JOBS=${JOBS:-2}
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
common=(--modes before,torn,term --max-points 1000 --jobs "$JOBS" --timeout 300 --grace 20
        --step-regex 'chaos: resumed from step (\d+)' --result-file '{out}/result.json')
echo "== every checkpoint kept (LOST_WORK judged) =="
"$PY" -m ckpt_chaos run --work "$WORK/keep-all" "${common[@]}" \
    --checkpoint-glob '{out}/run/checkpoints/fold0/step-*.ckpt' --ckpt-ignore-size \
    --fail-on HARD_FAIL,SILENT_DIVERGENCE,LOST_WORK,CONTROL_FAIL -- "$PY" tests/chaos_train.py '{out}'
if [ "${SKIP_PRUNED:-0}" != 1 ]; then
  echo "== keep=2: pruning at every save =="
  "$PY" -m ckpt_chaos run --work "$WORK/keep-2" "${common[@]}" \
      --fail-on HARD_FAIL,SILENT_DIVERGENCE,CONTROL_FAIL -- "$PY" tests/chaos_train.py '{out}' --keep 2
fi
