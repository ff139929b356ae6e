"""The setup cell every notebook carries right after its parameters: it makes `kagglekit_nb` importable.

It has to run before `import kagglekit_nb`, so it cannot call the package: it is plain code, kept
here once and pasted verbatim into each notebook (a test compares them). In order it uses

1. the kit when it is already installed (a local checkout, Colab after a first run, a Kaggle image
   that has it);
2. the wheels of an attached Kaggle dataset made by `kagglekit bundle` (found by its
   `kagglekit_nb-*.whl` up to three folders below /kaggle/input), installed with
   `pip install --no-index --find-links`: the way that works with internet off;
3. the package index, when the notebook is online.
"""
from __future__ import annotations

__all__ = ["SETUP_CELL", "WHEEL_GLOB"]

WHEEL_GLOB = "kagglekit_nb-*.whl"  # the file `kagglekit bundle` writes and the cell looks for

SETUP_CELL = '''\
# Make kagglekit_nb importable: the installed kit, else the wheels dataset made by `kagglekit bundle`
# (attach it when internet is off), else the package index.
import glob, importlib.util, os, subprocess, sys
_kaggle_input = "/kaggle/input"
if importlib.util.find_spec("kagglekit_nb") is None:
    _wheels = sorted(glob.glob(f"{_kaggle_input}/*/kagglekit_nb-*.whl") + glob.glob(f"{_kaggle_input}/*/*/kagglekit_nb-*.whl")
                     + glob.glob(f"{_kaggle_input}/*/*/*/kagglekit_nb-*.whl"))
    _source = ["--no-index", "--find-links", os.path.dirname(_wheels[-1])] if _wheels else []
    print("installing kagglekit_nb from", _source[-1] if _source else "the package index")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *_source, "kagglekit_nb"], check=True)
    importlib.invalidate_caches()'''
