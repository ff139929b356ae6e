"""The classification notebook's steps on sixteen published Kaggle layouts, with no parameters but the
budget: is the submission valid by the competition's own rules, and does it beat the trivial baseline by
the competition's own metric?

    python benchmarks/layout_suite.py [--budget 45s] [--only NAME ...] [--train 120 --test 40]

Each layout (tests/layouts.py: the competition's exact files, folders and columns, filled with real digit
images) is generated, then read, trained and submitted by the same calls the notebook makes, all at
their defaults (MODEL "auto", EPOCHS None, FOLDS 5, WEIGHTS "auto": random here, nothing attached). The
table shows per layout: the target the kit read, whether the file is valid, its score, the baseline's
score (both by the competition's metric), the metric the run chose its candidate by (the kit's default
for the target unless METRIC says otherwise), the out-of-fold scores of the classical stage, the deep
model and the submitted candidate by it (and which one that was), and the seconds the run took. The last lines count the valid submissions, those
that beat the baseline, and those whose submitted OOF score is at least the classical stage's.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from layouts import LAYOUTS, is_better, make  # noqa: E402

from kagglekit_nb.metrics import get_metric  # noqa: E402
from kagglekit_nb.tasks import classification as task  # noqa: E402


def run_layout(name: str, root: Path, budget: str, n_train: int, n_test: int) -> dict:
    layout = make(name, root / "data", n_train=n_train, n_test=n_test)
    out = root / "out"
    cfg = task.Config(DATA_DIR=str(layout.data_dir), OUTPUT_DIR=str(out), BUDGET=budget)
    t0 = time.monotonic()
    row = {"layout": name, "target": "-", "valid": False, "score": None, "baseline": layout.baseline_score(),
           "metric": layout.metric, "submitted": "-", "error": "", "oof": {}}
    try:
        run = task.start(cfg, environ={"KAGGLEKIT_START": repr(t0)})  # the budget starts with this layout
        data = task.load(cfg, run)
        row["target"] = data.kind
        folds = task.make_folds(data, cfg, run)
        models = task.train(data, folds, cfg, run)
        preds = task.predict(data, models, cfg, run)
        path = task.write_submission(data, preds, cfg, run)
        task.finish(data, path, cfg, run)
    except Exception as e:  # the table reports a failed layout; the others still run
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        traceback.print_exc(file=sys.stderr)
    sub = out / "submission.csv"
    if sub.is_file():
        problems = layout.validate(sub)
        row["valid"] = not problems
        if row["valid"]:
            row["score"] = layout.score(sub)
        elif not row["error"]:
            row["error"] = problems[0][:120]
    record = out / "run.json"
    if record.is_file():
        saved = json.loads(record.read_text())
        row["submitted"] = saved.get("submitted", "-")
        row["oof"] = saved.get("candidates") or {}
        row["run_metric"] = saved.get("metric")
    row["seconds"] = round(time.monotonic() - t0, 1)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", default="45s", help="BUDGET of each run (default 45s)")
    p.add_argument("--only", nargs="*", default=None, help="layout names (default: all sixteen)")
    p.add_argument("--train", type=int, default=120, help="training images per layout")
    p.add_argument("--test", type=int, default=40, help="test images per layout")
    args = p.parse_args(argv)
    names = args.only or sorted(LAYOUTS)
    rows = []
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(run_layout(name, Path(tmp), args.budget, args.train, args.test))
        r = rows[-1]
        print(f"{r['layout']}: {r['target']} valid={r['valid']} score={r['score']} baseline={r['baseline']:.4f} "
              f"({r['seconds']}s){' ' + r['error'] if r['error'] else ''}", file=sys.stderr, flush=True)
    print("| layout | target | valid | metric | score | baseline | OOF metric | classical OOF | deep OOF | submitted OOF | "
          "submitted | s |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        oof = r["oof"]
        print(f"| {r['layout']} | {r['target']} | {'yes' if r['valid'] else 'NO'} | {r['metric']} | "
              f"{_num(r['score'])} | {r['baseline']:.4f} | {r.get('run_metric') or '-'} | {_num(oof.get('classical'))} | "
              f"{_num(oof.get('deep'))} | "
              f"{_num(oof.get(r['submitted']))} | {r['submitted']} | {r['seconds']} |")
    valid = sum(r["valid"] for r in rows)
    beat = sum(r["valid"] and is_better(r["metric"], r["score"], r["baseline"]) for r in rows)
    held = sum(_at_least_classical(r) for r in rows)
    print(f"\nvalid submissions: {valid}/{len(rows)}; better than the baseline: {beat}/{len(rows)}; "
          f"submitted OOF at least the classical stage's: {held}/{len(rows)} "
          f"(budget {args.budget} each, {args.train} train / {args.test} test images)")
    return 0 if valid == len(rows) else 1


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _at_least_classical(row: dict) -> bool:
    """The submitted candidate's OOF score is at least the classical stage's (by the metric's own
    direction); true when the classical stage did not run, as there is no bar to hold."""
    oof = row["oof"]
    bar, got = oof.get("classical"), oof.get(row["submitted"])
    if bar is None:
        return row["valid"]
    if got is None:
        return False
    metric = get_metric(row["run_metric"])
    return got == bar or metric.better(got, bar)


if __name__ == "__main__":
    sys.exit(main())
