"""How long `kagglekit verify` takes on a large submission, against reading the same two files with
pandas (the least any check must do), side by side in one process.

    python benchmarks/verify_speed.py [--rows 100000 500000] [--repeats 5]

For each size it writes a sample submission and a valid submission of that many rows (string ids,
one probability column per class, 10 classes: the widest common layout), then times
`verification.verify` and a plain `pandas.read_csv` of both files, alternating which runs first.
Also the whole command (`python -m kagglekit_nb verify`, a fresh interpreter, as an agent calls it).
The last line is `ratio X` (verify / plain read) at the largest size.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kagglekit_nb.verification import verify


def _files(folder: Path, rows: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    ids = [f"img_{i:07d}" for i in range(rows)]
    classes = [f"class_{c}" for c in range(10)]
    sample = pd.DataFrame({"id": ids, **{c: 0.1 for c in classes}})
    probs = rng.dirichlet(np.ones(10), size=rows)
    sub = pd.DataFrame({"id": ids, **{c: probs[:, j] for j, c in enumerate(classes)}})
    s, p = folder / f"sample_{rows}.csv", folder / f"sub_{rows}.csv"
    sample.to_csv(s, index=False)
    sub.to_csv(p, index=False, float_format="%.6f")
    return s, p


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 500_000])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    ratio = None
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            sample, sub = _files(Path(tmp), rows)
            kit, plain = [], []
            for r in range(args.repeats):
                pair = [("kit", lambda: verify(sub, sample)), ("plain", lambda: (pd.read_csv(sub), pd.read_csv(sample)))]
                for name, fn in (pair if r % 2 == 0 else pair[::-1]):
                    (kit if name == "kit" else plain).append(_time(fn))
            assert verify(sub, sample).valid
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "kagglekit_nb", "verify", str(sub), "--sample", str(sample)],
                                  capture_output=True, text=True)
            command_s = time.perf_counter() - t0
            assert proc.returncode == 0, proc.stdout + proc.stderr
            ratio = statistics.median(kit) / statistics.median(plain)
            print(f"{rows:>8} rows: verify median {statistics.median(kit):.3f} s, plain read_csv of both "
                  f"{statistics.median(plain):.3f} s (ratio {ratio:.2f}); `kagglekit verify` command {command_s:.2f} s")
    print(f"ratio {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
