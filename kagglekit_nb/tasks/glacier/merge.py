"""Blending glacier fine-tune runs: their packages' fold models merged into one code package.

    result = blend_packages(["runs/SEED=0", "runs/SEED=1"], out="runs/blend")   # kagglekit blend
    result.table        # each run's package MCC on the held-out tiles, and the blend's

A glacier run submits a code package (`package/solution.py` + `model.pth`), and `solution.py`
already averages every fold model in `model.pth`, each fed with its own training-fold statistics. So
the blend of several runs is one package holding all their fold models. It is scored as each run's
package is, by `verify_code_package` (a fresh interpreter running `maskgeration`) on the runs'
held-out tiles (`<run>/holdout`, fold -1 in `folds.csv`, never trained on by any of them), and it is
written as the blend only when its MCC there is at least the best single run's package's; otherwise
the best run's package is copied. The runs must hold out the same tiles (`kagglekit batch` shares
one split) and agree on what `solution.py` reads from `model.pth` beside the models: architecture,
encoder, bands, classes, window, overlap and TTA (an error names the setting and the runs).
Normalisation statistics need not agree: each model keeps its own. A run whose package is the NDSI
rule (its models did not beat it) contributes no models but is scored and can still be chosen.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..._atomic import write_json
from .package import KIND, MODEL_FILE, SOLUTION_FILE, export_code_package, verify_code_package
from .training import HOLDOUT_FOLD

__all__ = ["METRIC", "SETTINGS", "is_glacier_run", "blend_packages"]

METRIC = "mcc"                         # pixel MCC over the held-out tiles, as the fine-tune's finish reports it
SCORE_COLUMN = "holdout_mcc"           # each run's score in the table and blend.json
PACKAGE_DIR = "package"                # in a fine-tune run folder (finetune.PACKAGE_DIR)
HOLDOUT_DIR = "holdout"                # the held-out tiles in the GlacierHack layout (finetune.HOLDOUT_DIR)
FOLDS_FILE = "folds.csv"
# what solution.py reads from model.pth beside the models: the merged package has one of each
SETTINGS = {"arch": "the architecture", "encoder": "ENCODER", "in_channels": "the number of bands",
            "n_classes": "the classes", "band_folders": "the band folders", "band_names": "the bands",
            "label_values": "the mask encoding", "window": "WINDOW", "overlap": "OVERLAP", "tta": "TTA"}
DECIMALS = 6                           # scores compared as the fine-tune's finish compares them


def is_glacier_run(folder: str | Path) -> bool:
    """A fine-tune run folder: it holds a code package (`package/model.pth`)."""
    return (Path(folder) / PACKAGE_DIR / MODEL_FILE).is_file()


@dataclass
class _Run:
    name: str
    dir: Path
    package: Path
    content: dict[str, Any]            # model.pth
    holdout: list[str]                 # held-out tile names (fold -1 in folds.csv)

    @property
    def models(self) -> list[dict[str, torch.Tensor]]:
        return list(self.content.get("models") or [])


def _load_run(folder: str | Path) -> _Run:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"RUN_DIR {folder} is not a folder: pass the output folders of finished runs.")
    package = path / PACKAGE_DIR
    if not (package / MODEL_FILE).is_file() or not (package / SOLUTION_FILE).is_file():
        raise FileNotFoundError(f"{package} holds no code package ({SOLUTION_FILE} + {MODEL_FILE}): run the "
                                "glacier_finetune notebook on that folder first.")
    if not (path / FOLDS_FILE).is_file():
        raise FileNotFoundError(f"{path / FOLDS_FILE} is missing: the run has not split its tiles yet.")
    folds = pd.read_csv(path / FOLDS_FILE, dtype={"id": str})
    holdout = sorted(folds.loc[folds["fold"] == HOLDOUT_FOLD, "id"])
    if not holdout:
        raise ValueError(f"run {path.name} holds out no tiles (HOLDOUT = 0): a blend is scored on held-out tiles "
                         "no run trained on; run the fine-tune with HOLDOUT of 1 or more (3 by default).")
    if not (path / HOLDOUT_DIR / "labels").is_dir():
        raise FileNotFoundError(f"{path / HOLDOUT_DIR} (the held-out tiles with their labels) is missing: the run "
                                "has not checked its package yet; run its notebook again on the same folder.")
    try:
        content = torch.load(package / MODEL_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever torch says, the file cannot be merged
        raise ValueError(f"{package / MODEL_FILE} cannot be read ({type(e).__name__}: {e}); run the run's "
                         "notebook again on that folder.") from None
    if not isinstance(content, dict) or "models" not in content:
        raise ValueError(f"{package / MODEL_FILE} is not a kagglekit_nb glacier package: only packages written "
                         "by the glacier_finetune notebook can be merged.")
    return _Run(name=path.name, dir=path, package=package, content=content, holdout=holdout)


def _check_runs(runs: Sequence[_Run]) -> None:
    """Same held-out tiles for all; the same package settings for every run that holds models."""
    first = runs[0]
    for other in runs[1:]:
        if other.holdout != first.holdout:
            raise ValueError(f"runs {first.name} and {other.name} hold out different tiles ({', '.join(first.holdout)} "
                             f"vs {', '.join(other.holdout)}): the models of one were trained on tiles the other "
                             "is scored on. Blend runs made with one split: copy one run's folds.csv into the "
                             "other's folder before it starts (`kagglekit batch` does this).")
    trained = [r for r in runs if r.models]
    for other in trained[1:]:
        for key, what in SETTINGS.items():
            a, b = trained[0].content.get(key), other.content.get(key)
            if a != b:
                raise ValueError(f"runs {trained[0].name} and {other.name} cannot be merged into one package: "
                                 f"{what} differs ({key} {a!r} vs {b!r}). Blend runs made with the same {what}.")


def _score(package: Path, holdout: Path) -> float | None:
    report = verify_code_package(package, holdout)
    return report.stats.get("mcc") if report.valid else None


def _better_or_equal(a: float | None, b: float | None) -> bool:
    return a is not None and (b is None or round(a, DECIMALS) >= round(b, DECIMALS))


def blend_packages(run_dirs: Sequence[str | Path], out: str | Path, *, log: Any = print) -> Any:
    """Merge the fold models of the glacier runs `run_dirs` into one package, score it and each
    run's package on the held-out tiles, and write `<out>/package` (the merged package when it
    scores at least the best run's, else a copy of that run's), verified into
    `<out>/verification.json`, and `<out>/blend.json`. Returns an `ensemble.Blended`."""
    from ...ensemble import BLEND_FILE, Blended, check_run_dirs
    from ...submission import SubmissionError, finalize

    check_run_dirs(run_dirs)
    runs = [_load_run(d) for d in run_dirs]
    _check_runs(runs)
    holdout = runs[0].dir / HOLDOUT_DIR
    scores = {r.name: _score(r.package, holdout) for r in runs}
    for r in runs:
        what = f"{len(r.models)} fold model(s)" if r.models else "the NDSI rule"
        log(f"{r.name}: {what}, MCC {_text(scores[r.name])} on {len(r.holdout)} held-out tile(s)")
    best = max(runs, key=lambda r: (scores[r.name] is not None, round(scores[r.name] or 0.0, DECIMALS)))
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    target = out / PACKAGE_DIR
    shutil.rmtree(target, ignore_errors=True)
    trained = [r for r in runs if r.models]
    merged_score, submitted, weights = None, best.name, {best.name: 1.0}
    if len(trained) >= 2:
        settings = trained[0].content
        states = [{k: v.float() if v.is_floating_point() else v for k, v in m.items()}
                  for r in trained for m in r.models]
        stats = [s for r in trained for s in (r.content.get("model_stats") or [r.content["stats"]] * len(r.models))]
        export_code_package(target, states, arch=settings["arch"], encoder=settings["encoder"],
                            band_folders=settings["band_folders"], band_names=settings["band_names"], stats=stats,
                            window=settings["window"], overlap=settings["overlap"], tta=settings["tta"],
                            n_classes=settings["n_classes"], log=log)
        kept = len(torch.load(target / MODEL_FILE, map_location="cpu", weights_only=True)["models"])
        merged_score = _score(target, holdout)
        log(f"merged package ({kept} fold models of {len(trained)} runs): MCC {_text(merged_score)} vs the best run's "
            f"({best.name}) {_text(scores[best.name])}")
        if _better_or_equal(merged_score, scores[best.name]):
            total = sum(len(r.models) for r in trained)
            submitted, weights = "blend", {r.name: len(r.models) / total for r in trained}
        else:
            shutil.rmtree(target)
    else:
        log(f"{len(trained)} run(s) hold fold models: nothing to merge, the best run's package is the blend")
    if submitted != "blend":
        shutil.copytree(best.package, target)
        log(f"{target}: a copy of {best.name}'s package, the best single one")
    errors: list[str] = []
    try:
        valid = bool(finalize(target, holdout, out, kind=KIND).valid)
    except SubmissionError as e:  # finalize wrote the NDSI package in its place
        valid, errors = False, list(e.report.errors) if e.report is not None else [str(e)]
    score = merged_score if submitted == "blend" else scores[best.name]
    tiles = len(runs[0].holdout)
    result = Blended(submission=target, metric=METRIC, score=score, scores=scores, weights=weights, rows=tiles,
                     valid=valid, scored_on=f"{METRIC} on {tiles} held-out tile(s)", score_column=SCORE_COLUMN)
    write_json(out / BLEND_FILE, {
        "metric": METRIC, "greater_is_better": True, "submitted": submitted, "score": score,
        "merged_score": merged_score, "rows": result.rows, "holdout_tiles": runs[0].holdout,
        "weights": weights, "valid": valid,
        "runs": {r.name: {"dir": str(r.dir.resolve()), "models": len(r.models),
                          "candidate": "model" if r.models else "ndsi", SCORE_COLUMN: scores[r.name],
                          "ndsi_mcc_holdout": (_record(r.dir).get("scores") or {}).get("ndsi_mcc_holdout")}
                 for r in runs},
        "sample": str(holdout), "errors": errors[:10]})
    return result


def _record(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _text(score: float | None) -> str:
    return "n/a" if score is None else f"{score:.4f}"
