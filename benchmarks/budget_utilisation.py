"""How well the time budget is used: runs the classification notebook on the demo competition with
budgets drawn from 60-300 s and an epoch count that cannot fit, then reports

  - the deadline hit rate: runs whose whole `kagglekit run` command (kernel start and shutdown
    included) ended within the budget with a valid submission;
  - the mean share of the budget spent training (run.json phases.train / budget_s).

The baseline it is measured against is the budget itself (a run that trains until the deadline and
then predicts would miss it). Usage:

    python benchmarks/budget_utilisation.py [--runs 10] [--seed 0] [--min 60] [--max 300]

Last line: `ratio X` = mean training share.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min", type=float, default=60)
    ap.add_argument("--max", type=float, default=300)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    budgets = [round(rng.uniform(args.min, args.max)) for _ in range(args.runs)]
    hits, shares = 0, []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        subprocess.run([sys.executable, "-m", "kagglekit_nb", "demo", "classification", "--out", str(data),
                        "--seed", str(args.seed)], check=True, capture_output=True)
        print(f"{'run':>3} {'budget_s':>8} {'wall_s':>7} {'train_s':>7} {'share':>6} {'valid':>5} stop_reason")
        for i, budget in enumerate(budgets):
            out = Path(tmp) / f"run{i}"
            t0 = time.monotonic()
            proc = subprocess.run(
                [sys.executable, "-m", "kagglekit_nb", "run", "classification", "--data", str(data),
                 "--out", str(out), "--budget", f"{budget}s", "-p", "EPOCHS", "500", "--quiet"],
                capture_output=True, text=True)
            wall = time.monotonic() - t0
            record = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
            verification = out / "verification.json"
            valid = proc.returncode == 0 and verification.exists() and json.loads(verification.read_text())["valid"]
            train_s = record.get("phases", {}).get("train", 0.0)
            share = train_s / budget
            hit = valid and wall <= budget
            hits += hit
            shares.append(share)
            print(f"{i:>3} {budget:>8} {wall:>7.1f} {train_s:>7.1f} {share:>6.1%} {str(valid):>5} "
                  f"{record.get('stop_reason', proc.stderr.strip()[-120:])}", flush=True)
    mean_share = sum(shares) / len(shares)
    print(f"deadline hit {hits}/{len(budgets)}; mean training share {mean_share:.1%}")
    print(f"ratio {mean_share:.3f}")
    return 0 if hits == len(budgets) else 1


if __name__ == "__main__":
    sys.exit(main())
