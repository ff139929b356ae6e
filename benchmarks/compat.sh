#!/usr/bin/env bash
# Kaggle's default image: the kit's unit tests against the torch / torchvision / timm of that image.
#
#   bash benchmarks/compat.sh [VENV_DIR]
#
# Kaggle's image (late 2026) runs Python 3.12 with torch 2.10. This builds a virtual env with the
# closest published wheels for the Python found here (KAGGLE_TORCH, KAGGLE_TORCHVISION and
# KAGGLE_TIMM override them), installs the kit from this checkout on top without changing them,
# and runs the unit tests (the notebook runs are left out: `-m "not notebook"`). PYTHON picks the
# interpreter (python3.12 where it exists). The last lines say what ran and how it ended.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-${TMPDIR:-/tmp}/kagglekit-compat-venv}
PYTHON=${PYTHON:-$(command -v python3.12 || command -v python3)}
TORCH=${KAGGLE_TORCH:-2.10.0}
TORCHVISION=${KAGGLE_TORCHVISION:-0.25.0}
TIMM=${KAGGLE_TIMM:-1.0.*}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pins=("torch==$TORCH" "torchvision==$TORCHVISION" "timm==$TIMM")
"$VENV/bin/pip" install --quiet "${pins[@]}"
# the kit and the test tools, keeping the image's torch, torchvision and timm
"$VENV/bin/pip" install --quiet -e ".[test]" "${pins[@]}"
"$VENV/bin/python" - <<'PY'
import platform, timm, torch, torchvision
print(f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}")
PY
status=0
"$VENV/bin/python" -m pytest -q -m "not notebook" -p no:cacheprovider || status=$?
echo "compat: unit tests exited $status"
exit $status
