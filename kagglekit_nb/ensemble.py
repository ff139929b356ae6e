"""Blending finished runs: each run's out-of-fold and test predictions, weighted to the best OOF score.

Every run that predicts saves what a blend needs in its folder (`predictions.npz`, written by
`save_predictions`): the training ids, their targets and the submitted candidate's out-of-fold class
probabilities, the test ids and their test probabilities. With `labels.json` (classes, submission
format) and `folds.csv` (the split) that is all `blend_runs` reads:

    result = blend_runs(["runs/SEED=0", "runs/SEED=1", "runs/SEED=2"], out="runs/blend")
    result.table        # each run's OOF score and weight, and the blend's
    result.submission   # runs/blend/submission.csv, verified against the sample submission

The runs must share training ids, folds and classes (an error names the run and what differs). The
weights come from `blend.choose` (non-negative, summing to 1), so the submitted blend's OOF score is
never worse than the best single run's; `kagglekit blend RUN_DIR... --out DIR` is the same call.
Glacier fine-tune runs (a code package each) are blended by `tasks.glacier.merge.blend_packages`:
their fold models in one package, kept when it scores at least the best run's on the held-out tiles.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._atomic import write_atomic, write_json

__all__ = ["PREDICTIONS_FILE", "BLEND_FILE", "Blended", "save_predictions", "load_predictions", "blend_runs"]

PREDICTIONS_FILE = "predictions.npz"   # in a run folder: what the run submitted, for blends
BLEND_FILE = "blend.json"              # in the blend's folder: the runs, weights and scores
LABELS_FILE = "labels.json"            # written by the task's load: classes and submission format
FOLDS_FILE = "folds.csv"


def save_predictions(run_dir: str | Path, *, train_ids: Sequence[Any], targets: np.ndarray, oof: np.ndarray,
                     test_ids: Sequence[Any], test: np.ndarray, candidate: str, sample: str | Path) -> Path:
    """Save the submitted candidate's out-of-fold probabilities (train order, NaN rows: no OOF
    prediction), its test probabilities (sample order) and the sample submission's path as
    `<run_dir>/predictions.npz`."""
    path = Path(run_dir) / PREDICTIONS_FILE
    arrays = {"train_ids": np.asarray(train_ids, dtype=str), "targets": np.asarray(targets, dtype=np.int64),
              "oof": np.asarray(oof, dtype=np.float64), "test_ids": np.asarray(test_ids, dtype=str),
              "test": np.asarray(test, dtype=np.float64), "candidate": np.asarray(candidate),
              "sample": np.asarray(str(Path(sample).resolve()))}
    write_atomic(path, lambda fh: np.savez(fh, **arrays), binary=True)
    return path


@dataclass
class _Run:
    name: str
    dir: Path
    labels: dict[str, Any]
    folds: pd.Series                  # fold by training id
    train_ids: np.ndarray
    targets: np.ndarray
    oof: np.ndarray
    test_ids: np.ndarray
    test: np.ndarray
    candidate: str
    sample: Path
    record: dict[str, Any]


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} cannot be read ({e}): run the notebook on that folder again.") from e


def load_predictions(run_dir: str | Path) -> dict[str, np.ndarray]:
    """The arrays `save_predictions` wrote into `run_dir` (a clear error when the run has none)."""
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {Path(run_dir).name} has not predicted yet (or was made by "
                                "a kit version that did not save predictions); run its notebook again with the "
                                "same output folder, it resumes and saves them.")
    with np.load(path, allow_pickle=False) as saved:
        return {k: saved[k] for k in saved.files}


def check_run_dirs(run_dirs: Sequence[str | Path]) -> None:
    """A blend's runs: at least two, with distinct folder names (each run is reported by its name)."""
    if len(run_dirs) < 2:
        raise ValueError(f"blend needs at least two run folders, got {len(run_dirs)}.")
    names = [Path(d).expanduser().name for d in run_dirs]
    if len(set(names)) != len(names):
        raise ValueError(f"two run folders have the same name ({names}): each run is reported by its folder name.")


def _load_run(folder: str | Path) -> _Run:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"RUN_DIR {folder} is not a folder: pass the output folders of finished runs.")
    labels = _read_json(path / LABELS_FILE, "the run has not read its data yet (runs of the classification "
                                            "and ISIC notebooks save it; glacier fine-tune runs are blended "
                                            "by their code packages).")
    record = _read_json(path / "run.json", "the run has not started: run its notebook first.")
    if not (path / FOLDS_FILE).is_file():
        raise FileNotFoundError(f"{path / FOLDS_FILE} is missing: the run has not split its data yet.")
    folds = pd.read_csv(path / FOLDS_FILE, dtype={"id": str}, keep_default_na=False).set_index("id")["fold"]
    saved = load_predictions(path)
    return _Run(name=path.name, dir=path, labels=labels, folds=folds, train_ids=saved["train_ids"].astype(str),
                targets=saved["targets"], oof=saved["oof"], test_ids=saved["test_ids"].astype(str),
                test=saved["test"], candidate=str(saved["candidate"]), sample=Path(str(saved["sample"])),
                record=record)


def _examples(values: Any) -> str:
    values = sorted(map(str, values))
    return ", ".join(values[:3]) + (f" and {len(values) - 3} more" if len(values) > 3 else "")


def _check_same(first: _Run, other: _Run) -> None:
    """`other` must have the ids, folds, classes, targets and test ids of `first` (any row order)."""
    where = f"run {other.name} ({other.dir}) and run {first.name} ({first.dir})"
    if other.labels.get("classes") != first.labels.get("classes"):
        raise ValueError(f"{where} have different classes ({other.labels.get('classes')} vs "
                         f"{first.labels.get('classes')}): blend runs made on the same data.")
    for key in ("kind", "id_col", "target_cols"):
        if other.labels.get(key) != first.labels.get(key):
            raise ValueError(f"{where} write different submission formats ({key}: {other.labels.get(key)!r} vs "
                             f"{first.labels.get(key)!r}): blend runs of the same competition.")
    for what, a, b in (("training ids", other.train_ids, first.train_ids), ("test ids", other.test_ids, first.test_ids)):
        extra, missing = set(a) - set(b), set(b) - set(a)
        if extra or missing:
            raise ValueError(f"{where} have different {what}: {len(extra)} only in {other.name} "
                             f"({_examples(extra)}), {len(missing)} only in {first.name} ({_examples(missing)}). "
                             "Blend runs made on the same data.")
    if set(other.folds.index) != set(first.folds.index) or \
            not (other.folds.reindex(first.folds.index).to_numpy() == first.folds.to_numpy()).all():
        differ = first.folds.index[other.folds.reindex(first.folds.index).to_numpy() != first.folds.to_numpy()]
        raise ValueError(f"{where} use different folds ({FOLDS_FILE}: {len(differ)} ids in another fold, e.g. "
                         f"{_examples(differ)}): their out-of-fold predictions cannot be weighed against each "
                         f"other. Run them with one split: copy {first.dir / FOLDS_FILE} into the other run's "
                         "folder before it starts (`kagglekit batch` does this for the runs of a batch).")
    order = pd.Series(np.arange(len(other.train_ids)), index=other.train_ids).reindex(first.train_ids).to_numpy()
    if not (other.targets[order] == first.targets).all():
        raise ValueError(f"{where} have different targets for the same ids: blend runs made on the same data.")


def _aligned(first: _Run, other: _Run) -> tuple[np.ndarray, np.ndarray]:
    """`other`'s OOF and test probabilities in `first`'s row order."""
    train = pd.Series(np.arange(len(other.train_ids)), index=other.train_ids).reindex(first.train_ids).to_numpy()
    test = pd.Series(np.arange(len(other.test_ids)), index=other.test_ids).reindex(first.test_ids).to_numpy()
    return other.oof[train], other.test[test]


def _metric_name(runs: Sequence[_Run], metric: str | None) -> str:
    if metric is not None:
        return metric
    names = {r.name: r.record.get("metric") or (r.record.get("config") or {}).get("METRIC") for r in runs}
    found = set(names.values())
    if len(found) != 1 or None in found:
        raise ValueError(f"the runs were scored by different metrics ({names}): pass --metric (metric=) to "
                         "say which one to optimise.")
    return found.pop()


def _sample_path(runs: Sequence[_Run], sample: str | Path | None) -> Path:
    """`sample`, else the sample submission the runs were verified against (predictions.npz)."""
    if sample is not None:
        path = Path(sample).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--sample {sample} does not exist: pass the competition's sample_submission.csv.")
        return path
    for run in runs:
        if run.sample.is_file():
            return run.sample
    raise FileNotFoundError(f"the sample submission the runs used ({runs[0].sample}) is not there any more: "
                            "pass --sample (sample=) with the competition's sample_submission.csv.")


def _frame(labels: dict[str, Any], sample: pd.DataFrame, test_ids: np.ndarray, probs: np.ndarray,
           threshold: float = 0.5) -> pd.DataFrame:
    """The submission in the sample's format, by the runs' own writer (`competition.submission_frame`)."""
    from .tasks.competition import submission_frame

    id_col, classes = labels["id_col"], list(labels["classes"])
    row = pd.Series(np.arange(len(test_ids)), index=test_ids).reindex(sample[id_col].astype(str)).to_numpy()
    if np.isnan(row.astype(float)).any():
        raise ValueError("the sample submission lists ids the runs did not predict: blend runs of this competition.")
    return submission_frame(sample, probs[row.astype(int)], kind=labels["kind"], classes=classes, id_col=id_col,
                            target_cols=list(labels["target_cols"]), positive=labels.get("positive"),
                            topk=labels.get("topk"), threshold=threshold)


@dataclass
class Blended:
    """What `blend_runs` made: the verified submission, the weights and scores, as a table too."""

    submission: Path
    metric: str
    score: float | None                     # the submitted blend's OOF score
    scores: dict[str, float | None] = field(default_factory=dict)   # each run's, on the same rows
    weights: dict[str, float] = field(default_factory=dict)
    rows: int = 0
    valid: bool = False
    scored_on: str = ""                     # what the scores are, e.g. "out-of-fold accuracy on 300 rows"
    score_column: str = "oof_score"

    @property
    def table(self) -> pd.DataFrame:
        names = [*self.scores, "blend"]
        return pd.DataFrame({self.score_column: [*self.scores.values(), self.score],
                             "weight": [self.weights.get(n, 0.0) for n in self.scores] + [1.0]},
                            index=pd.Index(names, name="run"))


def _glacier_runs(run_dirs: Sequence[str | Path]) -> bool:
    """True when the runs are glacier fine-tune runs (a code package, no predictions to weigh); a
    ValueError when only some are."""
    from .tasks.glacier.merge import is_glacier_run

    kinds = {Path(d).expanduser().name: is_glacier_run(Path(d).expanduser()) for d in run_dirs}
    if all(kinds.values()) or not any(kinds.values()):
        return bool(kinds) and all(kinds.values())
    raise ValueError(f"the runs are of different notebooks: {', '.join(n for n, g in kinds.items() if g)} submit a "
                     f"glacier code package, {', '.join(n for n, g in kinds.items() if not g)} do not; blend runs "
                     "of one notebook.")


def blend_runs(run_dirs: Sequence[str | Path], out: str | Path, *, metric: str | None = None,
               sample: str | Path | None = None) -> Blended:
    """Blend the submitted predictions of `run_dirs` with non-negative weights that optimise the
    out-of-fold `metric` (default: the runs' METRIC), and write `<out>/submission.csv` (verified
    against the sample submission: `sample`, else the one in the runs' data folder) and `blend.json`."""
    from .blend import BLEND, choose
    from .metrics import get_metric
    from .submission import finalize, write_verified
    from .tasks.competition import TARGETS

    glacier = _glacier_runs(run_dirs)
    if glacier:
        if metric not in (None, "mcc") or sample is not None:
            raise ValueError("glacier runs are blended by the MCC of their code packages on the held-out tiles: "
                             "--metric and --sample do not apply to them.")
        from .tasks.glacier.merge import blend_packages

        return blend_packages(run_dirs, out)
    check_run_dirs(run_dirs)
    runs = [_load_run(d) for d in run_dirs]
    names = [r.name for r in runs]
    first = runs[0]
    oofs, tests = {first.name: first.oof}, {first.name: first.test}
    for other in runs[1:]:
        _check_same(first, other)
        oofs[other.name], tests[other.name] = _aligned(first, other)
    metric_name = _metric_name(runs, metric)
    m = get_metric(metric_name)
    choice = choose(oofs, first.targets, m, blend=names)
    weights = choice.weights if choice.name == BLEND else {choice.name: 1.0}
    probs = choice.mix(tests)
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    sample_path = _sample_path(runs, sample)
    labels = first.labels
    kind = TARGETS[labels["kind"]][0] if labels["kind"] in TARGETS else labels["kind"]  # the format verified
    label_list = list(labels["classes"]) if kind in ("label", "label_list") else None
    threshold = 0.5
    if labels["kind"] == "label_list":  # the one decision threshold that scores the blend best out of fold
        from .tasks.competition import best_threshold

        threshold = best_threshold(choice.mix(oofs), first.targets, m)
    path = out / "submission.csv"
    sub = _frame(labels, pd.read_csv(sample_path, dtype=str, keep_default_na=False), first.test_ids, probs, threshold)
    report = write_verified(sub, path, sample_path, labels=label_list, kind=kind)
    if report.valid:
        report = finalize(path, sample_path, out, labels=label_list, kind=kind)
    result = Blended(submission=path, metric=metric_name, score=choice.scores.get(choice.name),
                     scores={n: choice.scores.get(n) for n in names}, weights=weights, rows=choice.rows,
                     valid=bool(report.valid), scored_on=f"out-of-fold {metric_name} on {choice.rows} rows")
    write_json(out / BLEND_FILE, {
        "metric": metric_name, "greater_is_better": m.greater_is_better, "submitted": choice.name,
        "score": result.score, "rows": result.rows, "weights": weights, "valid": result.valid,
        "runs": {r.name: {"dir": str(r.dir.resolve()), "candidate": r.candidate, "oof_score": result.scores[r.name]}
                 for r in runs},
        "sample": str(sample_path), "errors": list(report.errors)[:10]})
    return result
