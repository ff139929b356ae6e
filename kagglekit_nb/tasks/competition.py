"""How the kit reads an image competition, as Kaggle publishes it: the layout detectors and the one
`Competition` record that training, the writer and `kagglekit inspect` use.

    comp = read(data_dir, Overrides(), scratch=Path("work"), log=print)
    print(comp.describe())     # each decision, how it was made, and the parameter that overrides it

The detectors, in order (the first that applies wins, and every guess can be overridden):
- the sample submission (`sample_submission.csv` under any of its published names, also inside an
  archive): its first column is the id, the others the target columns;
- archives (`train.zip`, `test.7z`, `*.tar.gz`, `train.csv.zip`) are extracted once into the scratch
  folder, never into the read-only input (`kagglekit_nb.archives`);
- the labels: a labels CSV under any name (`train.csv`, `train_labels.csv`, `labels.csv`,
  `trainLabels.csv`, `train_v2.csv`, ...) holding the id column and a label column — the one named like
  the sample's target, the class columns of the sample (one-hot), or the column whose values are the
  sample's class columns; else pixels in CSV rows (`label,pixel0..`); else one folder per class
  (`train/<Class Name>/*.png`); else the label in the file name (`train/cat.0.jpg`);
- the target kind (`TARGETS`): one label, P(positive) of a binary task, one probability per class,
  multi-label (one-hot with several 1s, or space-separated labels), or the top k labels;
- the images, by id with or without extension, anywhere under the data (a folder per split, one shared
  folder, nested folders); of one image in several formats the first of IMAGE_EXTENSIONS wins.

This module imports no torch (`kagglekit inspect` stays light); images are only listed here, never
decoded, except one probe of the channel count.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..kaggle_io import INFO_FILE  # written by `kagglekit download`: the competition's evaluation metric
from .layout import (DICOM_HINT, IMAGE_EXTENSIONS, _dir, _Index, _Labels,
                     _labels_from_csv, _labels_from_files, _pixel_images, _column, read_csv, read_sample,
                     resolve_images, scratch_for)

__all__ = ["Competition", "Decision", "Overrides", "TARGETS", "IMAGE_EXTENSIONS", "probe_channels", "read",
           "read_sample", "best_threshold", "submission_frame"]


# target kind -> (the submission format verified, the default metric, what the writer puts in each row)
TARGETS: dict[str, tuple[str, str, str]] = {
    "label": ("label", "accuracy", "the most probable class"),
    "binary_proba": ("binary_proba", "roc_auc", "P(positive class)"),
    "class_proba": ("class_proba", "log_loss", "one probability column per class"),
    "multilabel_proba": ("multilabel_proba", "mean_column_auc", "one probability column per label (several on)"),
    "label_list": ("label_list", "f1_samples", "the space-separated labels above the tuned threshold"),
    "topk": ("label_list", "map@{k}", "the k most probable labels, space-separated"),
}
MULTILABEL = ("multilabel_proba", "label_list")     # trained with a sigmoid per label and BCE
LABEL_METRICS = ("accuracy", "balanced_accuracy", "qwk", "f1_micro", "f1_macro")  # judge hard labels



@dataclass(frozen=True)
class Overrides:
    """The parameters for every decision the reader may guess wrong (None: detect)."""

    sample_file: str | None = None     # SAMPLE_FILE
    labels_file: str | None = None     # LABELS_FILE
    label_column: str | None = None    # LABEL_COLUMN
    image_dir: str | None = None       # IMAGE_DIR: the folder of the training images
    test_image_dir: str | None = None  # TEST_IMAGE_DIR
    target: str | None = None          # TARGET: one of TARGETS
    metric: str | None = None          # METRIC

    @classmethod
    def from_config(cls, cfg: Any) -> "Overrides":
        return cls(**{f: getattr(cfg, f.upper(), None) for f in cls.__dataclass_fields__})

    def check(self) -> None:
        if self.target is not None and self.target not in TARGETS:
            raise ValueError(f"TARGET={self.target!r} is not valid; choose one of {', '.join(TARGETS)} (or None: "
                             "detected from the sample submission and the training labels).")


@dataclass
class Decision:
    """One thing the reader decided, how, and the parameter that overrides it."""

    what: str
    value: str
    how: str
    parameter: str = ""


@dataclass
class Competition:
    """What a run needs to know about the competition's files."""

    data_dir: Path
    train: pd.DataFrame                 # columns: id, label (class index; for multi-label a stratum), path
    test: pd.DataFrame                  # columns: id, path (the sample submission's rows, in order)
    sample: pd.DataFrame                # the sample submission as text
    sample_path: Path
    id_col: str
    target_cols: list[str]
    kind: str                           # a key of TARGETS
    classes: list[str]
    in_chans: int = 0                   # 1 or 3; probed from the images by `probe_channels`
    targets: np.ndarray | None = None   # (n,) class indices, or (n, C) 0/1 for the multi-label kinds (None: train.label)
    metric: str = ""                    # the metric's name ("": the target kind's default)
    topk: int | None = None             # kind "topk": labels per row
    positive: str | None = None         # kind "binary_proba": the class whose probability is written
    decisions: list[Decision] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)  # image path -> why it cannot be read

    def __post_init__(self) -> None:
        if self.targets is None and "label" in self.train.columns:
            self.targets = self.train["label"].to_numpy()
        if not self.metric:
            self.metric = TARGETS[self.kind][1].format(k=self.topk)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def y(self) -> np.ndarray:
        """The training targets: class indices, or (n, C) 0/1 for the multi-label kinds."""
        return self.targets

    @property
    def multilabel(self) -> bool:
        return self.kind in MULTILABEL

    @property
    def submission_kind(self) -> str:
        return TARGETS[self.kind][0]

    def describe(self) -> str:
        """The reading as a table: each decision, how it was made, the parameter that overrides it."""
        rows = [("decision", "value", "how", "override")] + [(d.what, d.value, d.how, d.parameter)
                                                             for d in self.decisions]
        widths = [min(60, max(len(r[c]) for r in rows)) for c in range(4)]
        return "\n".join("  ".join(v[:60].ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


# ----------------------------------------------------------------------------- CSV files


def _sorted_classes(labels: Any) -> list[str]:
    return sorted(set(labels), key=lambda c: (0, float(c), c) if _is_number(c) else (1, 0.0, c))


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _kind(lab: _Labels, sample: pd.DataFrame, target_cols: list[str], metric: str | None) -> tuple[str, str]:
    """The target kind of the task and why."""
    if lab.onehot is not None:
        numbers = lab.onehot.apply(pd.to_numeric, errors="coerce")
        if numbers.isna().any().any():
            raise ValueError(f"the class columns of {lab.file.name if lab.file else 'the labels'} hold non-numbers; "
                             "set LABEL_COLUMN or TARGET.")
        binary = numbers.isin([0, 1]).all().all()
        sums = numbers.sum(axis=1)
        if binary and ((sums != 1).any()):
            return "multilabel_proba", "0/1 class columns with several (or no) 1s per row"
        return "class_proba", "one class column per class in the sample"
    if len(target_cols) > 1:
        return "class_proba", "the sample has one column per class"
    values = lab.values
    if lab.source in ("csv", "pixels") and _several_labels(values):
        return "label_list", "training rows hold several space-separated labels"
    cells = sample[target_cols[0]].str.strip()
    k = cells.str.split().str.len().fillna(0)
    if len(k) and k.max() > 1 and not cells[k > 1].isin(set(values)).all():  # not a class name with a space
        return "topk", f"the sample lists {int(k.max())} labels per row"
    classes = set(values[values != ""])
    if len(classes) == 2 and metric not in LABEL_METRICS:
        numbers = pd.to_numeric(cells, errors="coerce")
        fractional = bool(((numbers > 0) & (numbers < 1)).any())
        if fractional:
            return "binary_proba", "two classes, and the sample holds probabilities"
        if classes == {"0", "1"} and ((cells == "").all() or numbers.notna().all()):
            return "binary_proba", "labels 0/1: a probability scores at least as well under AUC or log loss"
        if numbers.notna().all() and len(cells):
            return "binary_proba", "two classes, and the sample holds numbers"
    return "label", "one label column"


def _several_labels(values: pd.Series) -> bool:
    """Whether cells hold space-separated labels (multi-label) rather than class names with spaces: the
    labels combine into more distinct cells than there are labels, or a cell lists labels that also stand
    alone ("scab frog_eye_leaf_spot" next to "scab" and "frog_eye_leaf_spot"; never "Sugar beet")."""
    cells = set(values[values != ""])
    multi = {c for c in cells if len(c.split()) > 1}
    if not multi:
        return False
    tokens = {t for c in cells for t in c.split()}
    return len(cells) > len(tokens) or any(all(t in cells for t in c.split()) for c in multi)


def _positive(classes: list[str]) -> str:
    """The class whose probability a binary submission holds: 1, True, yes, else the second in order."""
    for name in ("1", "True", "true", "yes", "Yes", "positive", "malignant"):
        if name in classes:
            return name
    return classes[1]


def _encode(lab: _Labels, kind: str, target_cols: list[str], name: str
            ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(classes, targets, strata for the folds) of the training labels."""
    if kind == "multilabel_proba":
        targets = lab.onehot.apply(pd.to_numeric).to_numpy(np.float32)
        return list(target_cols), targets, _strata(targets)
    if kind == "class_proba" and lab.onehot is not None:
        onehot = lab.onehot.apply(pd.to_numeric).to_numpy(float)
        codes = onehot.argmax(1)
        return list(target_cols), codes.astype(np.int64), codes.astype(np.int64)
    values = lab.values
    empty = values == ""
    if empty.any():
        raise ValueError(f"{name} has {int(empty.sum())} rows with an empty {lab.column or 'label'!r} (e.g. ids "
                         f"{lab.ids[empty].head(3).tolist()}): drop or label them.")
    if kind == "label_list":
        tokens = values.str.split()
        classes = _sorted_classes({t for ts in tokens for t in ts})
        pos = {c: j for j, c in enumerate(classes)}
        targets = np.zeros((len(values), len(classes)), np.float32)
        for i, ts in enumerate(tokens):
            targets[i, [pos[t] for t in ts]] = 1
        return classes, targets, _strata(targets)
    if kind == "class_proba":
        classes = list(target_cols)
        unknown = sorted(set(values) - set(classes))
        if unknown:
            raise ValueError(f"{name} labels {unknown[:5]} are not columns of the sample submission ({classes[:10]}).")
    else:
        classes = _sorted_classes(values)
    codes = pd.Categorical(values, categories=classes).codes.astype(np.int64)
    return classes, codes, codes


def _strata(targets: np.ndarray) -> np.ndarray:
    """A fold stratum per multi-label row: its rarest label (rows without any: their own stratum)."""
    freq = targets.sum(0)
    rarest = np.where(targets > 0, freq[None, :], np.inf).argmin(1)
    return np.where(targets.sum(1) > 0, rarest, targets.shape[1]).astype(np.int64)


def _metric(ov: Overrides, roots: list[Path], kind: str, topk: int | None) -> tuple[str, str]:
    from ..metrics import from_kaggle, get_metric

    if ov.metric:
        get_metric(ov.metric)
        return ov.metric, "METRIC"
    for root in roots:
        info = root / INFO_FILE
        if info.is_file():
            text = str(json.loads(info.read_text()).get("evaluation_metric") or "")
            name = from_kaggle(text)
            if name:
                return name, f"the competition's evaluation metric ({text!r}, from {INFO_FILE})"
    default = TARGETS[kind][1].format(k=topk)
    return default, "the default for this target; set METRIC if your competition uses another"


# ----------------------------------------------------------------------------- the reader


def read(data_dir: Path, ov: Overrides = Overrides(), *, scratch: Path | None = None,
         log: Callable[[str], Any] = print, sample: tuple[Path, pd.DataFrame, list[Path]] | None = None,
         on_labels: Callable[[Competition], Any] | None = None) -> Competition:
    """Read a competition folder: the sample, the labels, the target kind, the metric, every image path.
    `sample` is `read_sample`'s answer when the caller already has it; `on_labels(comp)` is called as soon
    as the labels are read, before the images are looked for (the training prior can be written then,
    whatever the images do). No image is decoded."""
    ov.check()
    data_dir = Path(data_dir)
    sample_path, sample_df, roots = sample or read_sample(data_dir, ov.sample_file, scratch=scratch, log=log)
    id_col, target_cols = sample_df.columns[0], list(sample_df.columns[1:])
    decisions = [Decision("sample submission", sample_path.name, "found by name", "SAMPLE_FILE"),
                 Decision("id column", id_col, "the sample's first column"),
                 Decision("target columns", ", ".join(target_cols[:6]) + (" ..." if len(target_cols) > 6 else ""),
                          "the sample's other columns")]
    from .. import archives

    found = archives.find_archives(data_dir)
    if found:
        decisions.append(Decision("archives", ", ".join(p.name for p in found), f"extracted into {roots[-1]}"))
    index = _Index.of(roots)
    lab, why_not = _labels_from_csv(roots, sample_path, id_col, target_cols, ov, log,
                                    set(sample_df[id_col].str.strip()))
    if lab is None:
        lab = _labels_from_files(index, data_dir, ov)
    if lab is None:
        csvs = "; ".join(f"{n}: {w}" for n, w in why_not.items()) or "no CSV file besides the sample"
        raise ValueError(
            f"cannot find the training labels in {data_dir}: no CSV holds the id column {id_col!r} and a label "
            f"column ({csvs}), and no train folder holds one folder per class or labelled file names. Set "
            "LABELS_FILE (and LABEL_COLUMN), or IMAGE_DIR for a folder per class.")
    test_dir = _dir(data_dir, ov.test_image_dir, index)
    if lab.source == "pixels":
        return _read_pixels(data_dir, lab, sample_path, sample_df, roots, ov, scratch, decisions, log, on_labels)
    decisions.append(Decision("labels", f"{lab.file.name if lab.file else lab.source}"
                              + (f" column {lab.column!r}" if lab.column else ""), lab.how,
                              "LABELS_FILE, LABEL_COLUMN" if lab.file else "IMAGE_DIR"))
    metric_hint = ov.metric
    kind, why = (ov.target, "TARGET") if ov.target else _kind(lab, sample_df, target_cols, metric_hint)
    name = lab.file.name if lab.file else "the training folder"
    try:
        classes, targets, strata = _encode(lab, kind, target_cols, name)
    except ValueError:
        if on_labels is not None and lab.values is not None and (lab.values != "").sum() > 0:
            _prior_of_labelled(lab, kind, target_cols, name, sample_path, sample_df, data_dir, on_labels)
        raise
    if len(classes) < 2:
        raise ValueError(f"{name} has a single class {classes}: nothing to classify.")
    topk = None
    if kind == "topk":
        topk = int(sample_df[target_cols[0]].str.split().str.len().max() or 1)
    positive = _positive(classes) if kind == "binary_proba" else None
    metric, metric_how = _metric(ov, roots, kind, topk)
    if kind == "binary_proba" and len(classes) != 2:
        raise ValueError(f"TARGET='binary_proba' needs two classes; the labels hold {len(classes)}.")
    train = pd.DataFrame({"id": lab.ids.to_numpy(), "label": strata, "path": ""})
    test = pd.DataFrame({"id": sample_df[id_col].to_numpy(), "path": ""})
    comp = Competition(data_dir=data_dir, train=train, test=test, sample=sample_df, sample_path=sample_path,
                       id_col=id_col, target_cols=target_cols, kind=kind, classes=classes, targets=targets,
                       metric=metric, topk=topk, positive=positive, decisions=decisions)
    if on_labels is not None:
        on_labels(comp)
    train["path"] = lab.paths if lab.paths is not None else resolve_images(
        lab.ids, index, "train", name, data_dir, _dir(data_dir, ov.image_dir, index))
    test["path"] = resolve_images(test["id"], index, "test", sample_path.name, data_dir, test_dir, "TEST_IMAGE_DIR")
    if set(train["path"]) & set(test["path"]):
        shared = sorted(set(train["path"]) & set(test["path"]))
        raise ValueError(f"{len(shared)} test images are also training images (e.g. {shared[0]}); set IMAGE_DIR "
                         "and TEST_IMAGE_DIR to the folders of each split.")
    ext = Counter(Path(p).suffix.lower() for p in train["path"]).most_common(1)[0][0]
    if ext == ".dcm":
        import importlib.util
        if importlib.util.find_spec("pydicom") is None:
            raise ValueError(f"the images of {data_dir} are DICOM (.dcm) only; {DICOM_HINT} to read them.")
    folders = sorted({index.rel(Path(p)).rsplit("/", 1)[0] if "/" in index.rel(Path(p)) else "." for p in
                      train["path"].iloc[:: max(1, len(train) // 50)]})
    test_folders = sorted({index.rel(Path(p)).rsplit("/", 1)[0] if "/" in index.rel(Path(p)) else "." for p in
                           test["path"].iloc[:: max(1, len(test) // 50)]})
    decisions += [
        Decision("target", kind, why, "TARGET"),
        Decision("classes", f"{len(classes)}: " + ", ".join(classes[:8]) + (" ..." if len(classes) > 8 else ""),
                 "sorted" if lab.onehot is None and kind != "class_proba" else "the sample's class columns"),
        Decision("train images", f"{len(train)} {ext} in {', '.join(folders[:3])}", "found by id", "IMAGE_DIR"),
        Decision("test images", f"{len(test)} in {', '.join(test_folders[:3])}", "the sample's ids",
                 "TEST_IMAGE_DIR"),
        Decision("metric", metric, metric_how, "METRIC"),
        Decision("writes", _writes(kind, classes, positive, topk), TARGETS[kind][2]),
    ]
    _report_unseen(kind, sample_df, target_cols, classes, targets, decisions, log)
    return comp


def _prior_of_labelled(lab: _Labels, kind: str, target_cols: list[str], name: str, sample_path: Path,
                       sample: pd.DataFrame, data_dir: Path, on_labels: Callable[[Competition], Any]) -> None:
    """`on_labels` with the rows that have a label, when some have none (the run then fails, its
    emergency baseline made from the labelled rows' prior)."""
    keep = (lab.values != "").to_numpy()
    part = _Labels(source=lab.source, ids=lab.ids[keep].reset_index(drop=True), how=lab.how, file=lab.file,
                   column=lab.column, values=lab.values[keep].reset_index(drop=True))
    try:
        classes, targets, strata = _encode(part, kind, target_cols, name)
    except ValueError:
        return
    if len(classes) < 2 and kind != "label":
        return
    on_labels(Competition(data_dir=data_dir, train=pd.DataFrame({"id": part.ids, "label": strata, "path": ""}),
                          test=pd.DataFrame({"id": sample[sample.columns[0]], "path": ""}), sample=sample,
                          sample_path=sample_path, id_col=sample.columns[0], target_cols=target_cols, kind=kind,
                          classes=classes, targets=targets, positive=_positive(classes) if kind == "binary_proba"
                          else None, topk=int(sample[target_cols[0]].str.split().str.len().max() or 1)
                          if kind == "topk" else None))


def submission_frame(sample: pd.DataFrame, probs: np.ndarray, *, kind: str, classes: list[str], id_col: str,
                     target_cols: list[str], positive: str | None = None, topk: int | None = None,
                     threshold: float = 0.5) -> pd.DataFrame:
    """The submission in the sample's format from probabilities in the sample's row order (TARGETS says
    what each kind writes): the one writer of a run and of a blend of runs."""
    from ..metrics import decide

    sub = sample[[id_col]].copy()
    names = np.asarray(classes, dtype=object)
    col = target_cols[0]
    if kind == "label":
        sub[col] = names[probs.argmax(1)]
    elif kind == "binary_proba":
        sub[col] = probs[:, classes.index(positive if positive is not None else _positive(classes))]
    elif kind == "topk":
        top = np.argsort(-probs, axis=1, kind="stable")[:, :topk]
        sub[col] = [" ".join(names[row]) for row in top]
    elif kind == "label_list":
        on = decide(probs, threshold)
        order = np.argsort(-probs, axis=1, kind="stable")
        sub[col] = [" ".join(names[[j for j in row if on[i, j]]]) for i, row in enumerate(order)]
    else:  # one probability column per class or label, in the sample's order
        for j, c in enumerate(classes):
            sub[c] = probs[:, j]
        sub = sub[[id_col, *target_cols]]
    return sub


def best_threshold(oof: np.ndarray, y: np.ndarray, metric: Any) -> float:
    """The one decision threshold of multi-label labels that scores best out of fold (0.5 when none)."""
    from ..metrics import decide

    rows = np.isfinite(oof).all(1)
    best, best_t = None, 0.5
    for t in np.round(np.arange(0.05, 0.96, 0.05), 2):
        try:
            score = metric(y[rows], decide(oof[rows], float(t)).astype(float))
        except ValueError:
            continue
        if best is None or metric.better(score, best):
            best, best_t = score, float(t)
    return best_t


def _writes(kind: str, classes: list[str], positive: str | None, topk: int | None) -> str:
    if kind == "binary_proba":
        return f"P({positive})"
    if kind == "topk":
        return f"top {topk} labels"
    return {"label": "one class name per row", "class_proba": f"{len(classes)} probability columns",
            "multilabel_proba": f"{len(classes)} probability columns", "label_list": "space-separated labels"}[kind]


def _report_unseen(kind: str, sample: pd.DataFrame, target_cols: list[str], classes: list[str], targets: np.ndarray,
                   decisions: list[Decision], log: Callable[[str], Any]) -> None:
    """Classes the sample names that no training row has (they are predicted from nothing)."""
    if kind in ("class_proba", "multilabel_proba"):
        seen = targets.sum(0) > 0 if targets.ndim == 2 else np.bincount(targets, minlength=len(classes)) > 0
        unseen = [c for c, s in zip(classes, seen) if not s]
    elif kind == "label":
        cells = set(sample[target_cols[0]].str.strip()) - {""}
        unseen = sorted(cells - set(classes)) if cells and len(cells) <= 50 else []
        unseen = [] if all(_is_number(c) for c in unseen) and all(_is_number(c) for c in classes) else unseen
    else:
        unseen = []
    if unseen:
        decisions.append(Decision("never in training", ", ".join(unseen[:8]), "named by the sample, no training row"))
        log(f"WARNING: the sample submission names classes no training row has: {unseen[:8]}")


def _read_pixels(data_dir: Path, lab: _Labels, sample_path: Path, sample: pd.DataFrame, roots: list[Path],
                 ov: Overrides, scratch: Path | None, decisions: list[Decision], log: Callable[[str], Any],
                 on_labels: Callable[[Competition], Any] | None) -> Competition:
    """The digit-recognizer layout: `label,pixel0..` rows for training, `pixel0..` rows in test.csv."""
    id_col, target_cols = sample.columns[0], list(sample.columns[1:])
    frame = lab.frame
    col = _column(frame, ov.label_column or target_cols[0]) or _column(frame, "label")
    if col is None:
        raise ValueError(f"{lab.file.name} holds pixel columns but no label column {target_cols[0]!r}; set LABEL_COLUMN.")
    if scratch is None:
        raise ValueError("images in CSV rows need a scratch folder to be written into.")
    test_csv = next((p for root in roots for p in sorted(root.glob("test*.csv"))), None)
    if test_csv is None:
        raise FileNotFoundError(f"{data_dir} has training images in CSV rows but no test.csv with the test rows.")
    lab = _Labels(source="pixels", ids=pd.Series([str(i) for i in range(len(frame))]), how=lab.how, file=lab.file,
                  column=col, values=frame[col].str.strip())
    kind, why = (ov.target, "TARGET") if ov.target else _kind(lab, sample, target_cols, ov.metric)
    classes, targets, strata = _encode(lab, kind, target_cols, lab.file.name)
    metric, metric_how = _metric(ov, roots, kind, None)
    train = pd.DataFrame({"id": lab.ids.to_numpy(), "label": strata, "path": ""})
    test = pd.DataFrame({"id": sample[id_col].to_numpy(), "path": ""})
    comp = Competition(data_dir=data_dir, train=train, test=test, sample=sample, sample_path=sample_path,
                       id_col=id_col, target_cols=target_cols, kind=kind, classes=classes, targets=targets,
                       metric=metric, positive=_positive(classes) if kind == "binary_proba" else None,
                       decisions=decisions)
    if on_labels is not None:
        on_labels(comp)
    test_frame = read_csv(test_csv, log)
    ids = sample[id_col].str.strip()
    tc = _column(test_frame, id_col)
    if tc is not None:
        row = pd.Series(np.arange(len(test_frame)), index=test_frame[tc].str.strip())
        at = row.reindex(ids).to_numpy()
        how = f"test.csv's {tc!r} column"
    else:
        numbers = pd.to_numeric(ids, errors="coerce")
        if numbers.isna().any():
            raise ValueError(f"the sample's ids {ids.head(3).tolist()} are not row numbers of {test_csv.name}.")
        base = 1 if numbers.min() == 1 else 0
        at = (numbers - base).to_numpy()
        how = f"{base}-based row numbers of {test_csv.name}"
    if np.isnan(at.astype(float)).any() or at.max() >= len(test_frame) or at.min() < 0:
        raise ValueError(f"the sample's ids do not match the {len(test_frame)} rows of {test_csv.name}.")
    out = scratch_for(data_dir, scratch) / "pixels"
    train["path"] = _pixel_images(frame, out / "train", log)
    test_paths = _pixel_images(test_frame, out / "test", log)
    test["path"] = [test_paths[int(i)] for i in at]
    decisions += [
        Decision("labels", f"{lab.file.name} column {col!r}", lab.how, "LABEL_COLUMN"),
        Decision("target", kind, why, "TARGET"),
        Decision("classes", f"{len(classes)}: " + ", ".join(classes[:8]), "sorted"),
        Decision("train images", f"{len(train)} built from pixel rows", f"written to {out}"),
        Decision("test images", f"{len(test)} from {test_csv.name}", how),
        Decision("metric", metric, metric_how, "METRIC"),
        Decision("writes", _writes(kind, classes, comp.positive, None), TARGETS[kind][2]),
    ]
    return comp


def probe_channels(comp: Competition, read_mode: Callable[[list[str], dict[str, str]], int]) -> None:
    """Fill `comp.in_chans` from the first readable training images (`read_mode` decodes a few)."""
    comp.in_chans = read_mode(comp.train["path"].tolist(), comp.unreadable)
    comp.decisions.append(Decision("channels", str(comp.in_chans), "from the first readable images"))
