"""Real Kaggle image competitions in their published file layouts, generated small from real images.

Each layout writes one competition's files (names, folders, columns, archives) exactly as Kaggle
publishes them, filled with scikit-learn's handwritten digits (8x8 grey, bundled, no download),
upscaled and mapped to the competition's classes; RGB competitions get a random per-image tint, so
colour carries no label. With the files come the held-out answers, the competition's submission
rules and its metric, so reading a competition, training on it and submitting can be checked end to
end. The rules and metrics here are written from the competitions' pages, independently of the kit.

    layout = make("aerial-cactus-identification", tmp_path)  # writes tmp_path/aerial-cactus-identification/
    layout.validate(submission_csv)   # [] when Kaggle would accept the file, else what is wrong
    layout.score(submission_csv)      # the leaderboard metric against the held-out answers
    layout.baseline_score()           # what the trivial prior / most-frequent submission scores
"""
from __future__ import annotations

import functools
import io
import json
import math
import tempfile
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image
from sklearn import metrics as skm
from sklearn.preprocessing import MultiLabelBinarizer

__all__ = ["LAYOUTS", "METRICS", "TARGETS", "Layout", "Metric", "is_better", "make"]

TARGETS = ("label", "binary_proba", "class_proba", "multilabel_proba", "label_list", "topk")
TOP_K = 5  # predictions per row for the "topk" target (MAP@5)
LOG_LOSS_CLIP = 1e-15  # Kaggle clips probabilities to [eps, 1 - eps] before the log
SAMPLE = "sample_submission.csv"
_SUFFIX_FORMATS = {".jpg": "JPEG", ".png": "PNG", ".tif": "TIFF"}
_ZIP_TIME = (2019, 1, 1, 0, 0, 0)  # a fixed member time, so a zip is the same bytes for the same seed
_MIN_TRAIN_PER_CLASS = 5


# --------------------------------------------------------------------------- metrics

def _first(frame: pd.DataFrame) -> pd.Series:
    return frame.iloc[:, 0]


def _accuracy(truth: pd.DataFrame, pred: pd.DataFrame) -> float:
    return skm.accuracy_score(_first(truth), _first(pred))


def _f1_micro(truth: pd.DataFrame, pred: pd.DataFrame) -> float:
    return skm.f1_score(_first(truth), _first(pred), average="micro")


def _qwk(truth: pd.DataFrame, pred: pd.DataFrame) -> float:
    return skm.cohen_kappa_score(_first(truth).astype(int), _first(pred).astype(int), weights="quadratic")


def _roc_auc(truth: pd.DataFrame, pred: pd.DataFrame) -> float:
    return skm.roc_auc_score(_first(truth).astype(int), _first(pred).astype(float))


def _mean_column_auc(truth: pd.DataFrame, pred: pd.DataFrame) -> float:
    return float(np.mean([skm.roc_auc_score(truth[c].astype(int), pred[c].astype(float)) for c in truth]))


def _log_loss(truth: pd.DataFrame, pred: pd.DataFrame) -> float:
    """One column: P(positive). Several: one per class, one-hot truth; rows are renormalised after clipping."""
    p = np.clip(pred.astype(float).to_numpy(), LOG_LOSS_CLIP, 1 - LOG_LOSS_CLIP)
    if p.shape[1] == 1:
        return skm.log_loss(_first(truth).astype(int), p[:, 0], labels=[0, 1])
    p = p / p.sum(axis=1, keepdims=True)
    y = truth.astype(int).to_numpy().argmax(axis=1)
    return skm.log_loss(y, p, labels=list(range(p.shape[1])))


def _fbeta_samples(truth: pd.DataFrame, pred: pd.DataFrame, beta: float) -> float:
    true_sets = [cell.split() for cell in _first(truth)]
    pred_sets = [cell.split() for cell in _first(pred)]
    binarizer = MultiLabelBinarizer().fit(true_sets + pred_sets)
    return skm.fbeta_score(binarizer.transform(true_sets), binarizer.transform(pred_sets), beta=beta,
                           average="samples", zero_division=0)


def _map_at_k(truth: list[str], predicted: list[list[str]], k: int = TOP_K) -> float:
    """Mean over rows of 1/rank of the one true label among the first k predictions (0 when absent).

    As the humpback host's kernel scores it: the rank is the position in the submitted list, so a
    repeated label still takes its place.
    """
    total = 0.0
    for label, guesses in zip(truth, predicted, strict=True):
        if label in guesses[:k]:
            total += 1.0 / (guesses[:k].index(label) + 1)
    return total / len(truth)


def _map_at_5(truth: pd.DataFrame, pred: pd.DataFrame) -> float:
    return _map_at_k(list(_first(truth)), [cell.split() for cell in _first(pred)])


@dataclass(frozen=True)
class Metric:
    """A competition metric on aligned text frames (the submission's value columns); its best value."""

    score: Callable[[pd.DataFrame, pd.DataFrame], float]
    perfect: float
    lower_is_better: bool = False


METRICS: dict[str, Metric] = {
    "accuracy": Metric(_accuracy, 1.0),
    "roc_auc": Metric(_roc_auc, 1.0),
    "mean_column_auc": Metric(_mean_column_auc, 1.0),
    "log_loss": Metric(_log_loss, 0.0, lower_is_better=True),
    "qwk": Metric(_qwk, 1.0),
    "f1_micro": Metric(_f1_micro, 1.0),
    "f1_samples": Metric(functools.partial(_fbeta_samples, beta=1.0), 1.0),
    "f2_samples": Metric(functools.partial(_fbeta_samples, beta=2.0), 1.0),
    "map@5": Metric(_map_at_5, 1.0),
}


def _metric(name: str) -> Metric:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}.")
    return METRICS[name]


def is_better(metric: str, a: float, b: float) -> bool:
    """True when score `a` strictly beats score `b` under `metric` (lower for log loss, else higher)."""
    return a < b if _metric(metric).lower_is_better else a > b


# --------------------------------------------------------------------------- submission rules

def _read_text(path: Path) -> pd.DataFrame:
    """A CSV as text cells, empty cells as "" (never NaN), so what is checked is what was written."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _lines(index: pd.Index) -> str:
    """Data-row positions as file line numbers (the header is line 1), the first few only."""
    shown = ", ".join(str(i + 2) for i in index[:3])
    return f"line {shown}" if len(index) == 1 else f"lines {shown}" + (", ..." if len(index) > 3 else "")


def _some(n: int, noun: str) -> str:
    """ "1 cell", "3 cells": a count with its noun."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _header_problem(columns: list[str], expected: list[str]) -> str:
    missing = [c for c in expected if c not in columns]
    extra = [c for c in columns if c not in expected]
    why = "; ".join(([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra else []))
    return (f"the header is {','.join(columns)} but the sample's is {','.join(expected)} "
            f"({why or 'the same names in another order'}); write exactly the sample's columns in its order.")


def _id_problems(sub: pd.DataFrame, sample: pd.DataFrame, id_col: str) -> list[str]:
    problems = []
    ids, expected = sub[id_col], set(sample[id_col])
    if len(sub) != len(sample):
        problems.append(f"{len(sub)} rows but the sample has {len(sample)}; write one row per sample id.")
    repeated = sorted(ids[ids.duplicated()].unique())
    if repeated:
        problems.append(f"{_some(len(repeated), id_col + ' value')} written more than once, "
                        f"e.g. {repeated[:3]}; write each id once.")
    missing = sorted(expected - set(ids))
    if missing:
        problems.append(f"missing {_some(len(missing), id_col + ' value')} of the sample, e.g. {missing[:3]}.")
    unknown = sorted(set(ids) - expected)
    if unknown:
        problems.append(f"unknown {_some(len(unknown), id_col + ' value')} (not in the sample), "
                        f"e.g. {unknown[:3]}.")
    return problems


def _empty_cells(sub: pd.DataFrame) -> list[str]:
    return [f"column {col!r} has {_some(int(empty.sum()), 'empty cell')} ({_lines(sub.index[empty])}); "
            "fill every cell."
            for col in sub if (empty := sub[col].str.strip() == "").any()]


def _bad_cells(sub: pd.DataFrame, columns: list[str], is_bad: Callable[[str], bool], what: str) -> list[str]:
    """One message per column whose non-empty cells fail `is_bad`, naming a few of them."""
    problems = []
    for col in columns:
        cells = sub[col][sub[col].str.strip() != ""]
        bad = cells[cells.map(is_bad)]
        if len(bad):
            shown = ", ".join(repr(v) for v in bad.iloc[:3])
            problems.append(f"column {col!r}: {_some(len(bad), 'cell')} not {what} "
                            f"({shown} on {_lines(bad.index)}).")
    return problems


def _not_probability(cell: str) -> bool:
    try:
        value = float(cell)
    except ValueError:
        return True
    return not (math.isfinite(value) and 0.0 <= value <= 1.0)


def _listing(classes: list[str]) -> str:
    return ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")


def _check_label(sub, columns, classes):
    legal = set(classes)
    return _bad_cells(sub, columns, lambda c: c not in legal, f"a legal label ({_listing(classes)})")


def _check_probabilities(sub, columns, classes):
    return _bad_cells(sub, columns, _not_probability, "a probability in [0, 1]")


def _check_label_list(sub, columns, classes):
    legal = set(classes)
    return _bad_cells(sub, columns, lambda c: not set(c.split()) <= legal,
                      f"space-separated known labels ({_listing(classes)})")


def _check_top_k(sub, columns, classes):
    legal = set(classes)
    return (_bad_cells(sub, columns, lambda c: not 1 <= len(c.split()) <= TOP_K, f"1 to {TOP_K} labels")
            + _bad_cells(sub, columns, lambda c: not set(c.split()) <= legal,
                         f"known ids ({_listing(classes)})"))


_VALUE_RULES = {
    "label": _check_label,
    "binary_proba": _check_probabilities,
    "class_proba": _check_probabilities,
    "multilabel_proba": _check_probabilities,
    "label_list": _check_label_list,
    "topk": _check_top_k,
}


# --------------------------------------------------------------------------- trivial baselines

def _most_frequent(values: pd.DataFrame) -> dict[str, object]:
    col = values.columns[0]
    counts = values[col].astype(str).value_counts()
    return {col: sorted(counts.index[counts == counts.max()])[0]}


def _column_means(values: pd.DataFrame) -> dict[str, object]:
    return {col: float(values[col].astype(float).mean()) for col in values}


def _token_ranking(values: pd.DataFrame) -> list[tuple[str, int]]:
    counts = Counter(token for cell in _first(values).astype(str) for token in cell.split())
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _frequent_labels(values: pd.DataFrame) -> dict[str, object]:
    """The labels on at least half of the training rows (at least the most frequent one)."""
    ranking = _token_ranking(values)
    common = [label for label, n in ranking if n >= len(values) / 2] or [ranking[0][0]]
    return {values.columns[0]: " ".join(common)}


def _top_labels(values: pd.DataFrame) -> dict[str, object]:
    return {values.columns[0]: " ".join(label for label, _ in _token_ranking(values)[:TOP_K])}


_BASELINES = {
    "label": _most_frequent,
    "binary_proba": _column_means,
    "class_proba": _column_means,
    "multilabel_proba": _column_means,
    "label_list": _frequent_labels,
    "topk": _top_labels,
}


# --------------------------------------------------------------------------- the layout

@dataclass
class Layout:
    """One generated competition: its folder, the held-out answers, what a reader should find in it,
    and the competition's submission rules and metric.

    `answers` and `train_key` are in the sample submission's format (its id column and value columns;
    class probabilities as one-hot 0/1), for the test rows in the sample's order and for the training
    rows; `train_key` is where the trivial baseline comes from. The legal labels are `expect["classes"]`.
    """

    name: str
    data_dir: Path
    answers: pd.DataFrame
    target: str
    metric: str
    expect: dict
    train_key: pd.DataFrame

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"target={self.target!r} is not valid; choose one of {', '.join(TARGETS)}.")
        _metric(self.metric)

    @property
    def sample_path(self) -> Path:
        return self.data_dir / self.expect["sample_submission"]

    def validate(self, submission: Path) -> list[str]:
        """What Kaggle would reject in `submission` (header, ids, empty cells, values); [] when valid."""
        submission = Path(submission)
        if not submission.is_file():
            return [f"{submission}: no such file; write the submission CSV first."]
        try:
            sub = _read_text(submission)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            return [f"{submission}: not a readable CSV ({err}); write comma-separated text with a header."]
        sample = _read_text(self.sample_path)
        if list(sub.columns) != list(sample.columns):
            return [_header_problem(list(sub.columns), list(sample.columns))]
        values = list(sample.columns[1:])
        return (_id_problems(sub, sample, self.expect["id_col"]) + _empty_cells(sub)
                + _VALUE_RULES[self.target](sub, values, self.expect["classes"]))

    def score(self, submission: Path) -> float:
        """The competition metric of a valid `submission` against `answers` (ValueError if invalid)."""
        problems = self.validate(submission)
        if problems:
            raise ValueError(f"{submission} is not a valid {self.name} submission: " + " ".join(problems))
        id_col = self.expect["id_col"]
        truth = self.answers.astype(str).set_index(id_col)
        pred = _read_text(submission).set_index(id_col).loc[truth.index, truth.columns]
        return float(_metric(self.metric).score(truth, pred))

    def baseline(self) -> pd.DataFrame:
        """The trivial submission in the sample's format: the training class prior, positive rate or
        most frequent labels in every row."""
        frame = _read_text(self.sample_path)
        for col, value in _BASELINES[self.target](self.train_key.iloc[:, 1:]).items():
            frame[col] = value
        return frame

    def baseline_score(self) -> float:
        """The score of `baseline()`, written as a CSV and scored like any submission."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "baseline.csv"
            self.baseline().to_csv(path, index=False)
            return self.score(path)


# --------------------------------------------------------------------------- shared generators

@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0 * 255.0).round().astype(np.uint8), digits.target


@dataclass(frozen=True)
class _Split:
    """The digit images (8x8 uint8) and digits of the training and test rows, in file order."""

    train_images: np.ndarray
    train_digits: np.ndarray
    test_images: np.ndarray
    test_digits: np.ndarray


def _split(seed: int, n_digits: int, n_train: int, n_test: int) -> _Split:
    """`n_train` + `n_test` digits 0..n_digits-1, stratified, each digit >= 5 times in train."""
    from sklearn.model_selection import train_test_split

    images, target = _digits()
    pool = np.flatnonzero(target < n_digits)
    for arg, value, low in (("n_train", n_train, _MIN_TRAIN_PER_CLASS * n_digits), ("n_test", n_test, n_digits)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{arg}={value!r}: this layout draws {n_digits} digit classes and needs "
                             f"an integer {arg} >= {low}.")
    if n_train + n_test > len(pool):
        raise ValueError(f"n_train + n_test = {n_train + n_test} exceeds the {len(pool)} digits available.")
    chosen = pool if n_train + n_test == len(pool) else train_test_split(
        pool, train_size=n_train + n_test, stratify=target[pool], random_state=seed)[0]
    train, test = train_test_split(chosen, test_size=n_test, stratify=target[chosen], random_state=seed)
    fewest = np.bincount(target[train], minlength=n_digits).min()
    if fewest < _MIN_TRAIN_PER_CLASS:
        raise ValueError(f"n_train={n_train} leaves a class with {fewest} training images; "
                         f"raise n_train so every class has >= {_MIN_TRAIN_PER_CLASS}.")
    return _Split(images[train], target[train], images[test], target[test])


def _rng(out: Path, seed: int) -> np.random.Generator:
    """The layout's random stream: from the seed and the slug, so two layouts never share ids."""
    return np.random.default_rng([seed, zlib.crc32(out.name.encode())])


def _picture(digit: np.ndarray, size: tuple[int, int], rng: np.random.Generator, *,
             colour: bool = True, resample=Image.BILINEAR) -> Image.Image:
    """The 8x8 digit upscaled to `size` (width, height); in colour, light ink on dark paper of random hues."""
    grey = Image.fromarray(digit).resize(size, resample)
    if not colour:
        return grey
    ink, paper = rng.uniform(0.45, 1.0, 3), rng.uniform(0.0, 0.35, 3)
    g = np.asarray(grey, dtype=np.float64)[..., None] / 255.0
    return Image.fromarray(((paper * (1 - g) + ink * g) * 255).round().astype(np.uint8), "RGB")


def _pictures(images: np.ndarray, size: tuple[int, int], rng: np.random.Generator, **style) -> list[Image.Image]:
    return [_picture(img, size, rng, **style) for img in images]


def _encode(picture: Image.Image, suffix: str) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=_SUFFIX_FORMATS[suffix])
    return buffer.getvalue()


def _save_pictures(folder: Path, names: list[str], pictures: list[Image.Image]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, picture in zip(names, pictures, strict=True):
        picture.save(folder / name, format=_SUFFIX_FORMATS[Path(name).suffix])


def _write_zip(path: Path, folder: str, names: list[str], pictures: list[Image.Image]) -> None:
    """A zip holding `folder/` and `folder/<name>` for each picture (stored: JPEG does not compress)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(zipfile.ZipInfo(f"{folder}/", _ZIP_TIME), b"")
        for name, picture in zip(names, pictures, strict=True):
            archive.writestr(zipfile.ZipInfo(f"{folder}/{name}", _ZIP_TIME), _encode(picture, Path(name).suffix))


def _write_7z(path: Path, folder: str, names: list[str], pictures: list[Image.Image]) -> None:
    """A 7z archive holding `folder/<name>` for each picture (7z records the write time of each member)."""
    import py7zr

    with py7zr.SevenZipFile(path, "w") as archive:
        for name, picture in zip(names, pictures, strict=True):
            archive.writestr(_encode(picture, Path(name).suffix), f"{folder}/{name}")


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def _hex_ids(rng: np.random.Generator, n: int, width: int) -> list[str]:
    """`n` distinct lowercase hex strings of `width` characters."""
    ids: dict[str, None] = {}
    while len(ids) < n:
        ids.setdefault(rng.bytes((width + 1) // 2).hex()[:width])
    return list(ids)


def _number_ids(rng: np.random.Generator, n: int, digits: int) -> list[str]:
    """`n` distinct integers of exactly `digits` digits, as text."""
    low = 10 ** (digits - 1)
    return [str(v) for v in rng.choice(9 * low, size=n, replace=False) + low]


def _sorted_classes(values) -> list[str]:
    """Class names as text, sorted numerically when they are all integers, else as text."""
    names = {str(v) for v in values}
    return sorted(names, key=int) if all(n.lstrip("-").isdigit() for n in names) else sorted(names)


def _one_hot(labels: list[str], classes: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: [int(label == c) for label in labels] for c in classes})


def _key(id_col: str, ids, values: pd.DataFrame | dict) -> pd.DataFrame:
    """A frame in submission format: the id column, then the value columns (a scalar fills a column)."""
    ids = list(ids)
    if isinstance(values, dict):
        frame = pd.DataFrame(values, index=range(len(ids)))
    else:
        frame = values.reset_index(drop=True)
    frame.insert(0, id_col, ids)
    return frame


def _expect(*, id_col: str, label_source: str, labels_file: str | None, label_column: str | None,
            n_train: int, n_test: int, classes, image_format: str | None, archives: list[str] = (),
            sample_submission: str = SAMPLE) -> dict:
    return {"id_col": id_col, "label_source": label_source, "labels_file": labels_file,
            "label_column": label_column, "n_train": n_train, "n_test": n_test,
            "classes": _sorted_classes(classes), "image_format": image_format,
            "archives": sorted(archives), "sample_submission": sample_submission}


# --------------------------------------------------------------------------- the layouts

LAYOUTS: dict[str, Callable[..., Layout]] = {}  # slug -> make_layout(root, seed, *, n_train, n_test)


def _competition(slug: str):
    """Register a layout builder `build(out, seed, n_train, n_test)` as LAYOUTS[slug](root, seed, ...)."""
    def register(build):
        def make_layout(root: Path, seed: int = 0, *, n_train: int = 120, n_test: int = 40) -> Layout:
            out = Path(root) / slug
            if out.exists() and any(out.iterdir()):
                raise FileExistsError(f"{out} already holds files; make {slug!r} under an empty root.")
            out.mkdir(parents=True, exist_ok=True)
            return build(out, seed, n_train, n_test)

        make_layout.__doc__ = build.__doc__
        LAYOUTS[slug] = make_layout
        return build
    return register


def make(name: str, root: Path, seed: int = 0, *, n_train: int = 120, n_test: int = 40) -> Layout:
    """Write the layout `name` (a Kaggle slug) into `root/name` and return it.

        layout = make("cifar-10", tmp_path, seed=1)   # tmp_path/cifar-10/trainLabels.csv, train.7z, ...
    """
    if name not in LAYOUTS:
        raise ValueError(f"unknown layout {name!r}; choose one of {', '.join(sorted(LAYOUTS))}.")
    return LAYOUTS[name](Path(root), seed, n_train=n_train, n_test=n_test)


@_competition("digit-recognizer")
def _digit_recognizer(out: Path, seed: int, n_train: int, n_test: int) -> Layout:
    """MNIST as CSV rows: label + 784 pixel columns (28x28 grey), test without label, 1-based ImageId."""
    s = _split(seed, 10, n_train, n_test)
    columns = [f"pixel{i}" for i in range(28 * 28)]

    def pixels(images):
        rows = [np.asarray(Image.fromarray(img).resize((28, 28), Image.BILINEAR)).ravel() for img in images]
        return pd.DataFrame(np.stack(rows), columns=columns)

    train = pixels(s.train_images)
    train.insert(0, "label", s.train_digits)
    _write_csv(train, out / "train.csv")
    _write_csv(pixels(s.test_images), out / "test.csv")
    image_ids = range(1, n_test + 1)
    _write_csv(_key("ImageId", image_ids, {"Label": 0}), out / SAMPLE)
    return Layout(
        name=out.name, data_dir=out, target="label", metric="accuracy",
        answers=_key("ImageId", image_ids, {"Label": s.test_digits}),
        train_key=_key("ImageId", range(1, n_train + 1), {"Label": s.train_digits}),
        expect=_expect(id_col="ImageId", label_source="pixels", labels_file="train.csv", label_column="label",
                       n_train=n_train, n_test=n_test, classes=range(10), image_format=None))


@_competition("aerial-cactus-identification")
def _aerial_cactus(out: Path, seed: int, n_train: int, n_test: int) -> Layout:
    """32x32 aerial JPEGs in train.zip/test.zip; train.csv ids carry the .jpg; ~70% have a cactus."""
    rng = _rng(out, seed)
    s = _split(seed, 10, n_train, n_test)
    ids = [f"{h}.jpg" for h in _hex_ids(rng, n_train + n_test, 32)]
    train_ids, test_ids = ids[:n_train], ids[n_train:]
    cactus = {"train": (s.train_digits >= 3).astype(int), "test": (s.test_digits >= 3).astype(int)}
    _write_csv(_key("id", train_ids, {"has_cactus": cactus["train"]}), out / "train.csv")
    _write_zip(out / "train.zip", "train", train_ids, _pictures(s.train_images, (32, 32), rng))
    _write_zip(out / "test.zip", "test", test_ids, _pictures(s.test_images, (32, 32), rng))
    _write_csv(_key("id", test_ids, {"has_cactus": 0.5}), out / SAMPLE)
    return Layout(
        name=out.name, data_dir=out, target="binary_proba", metric="roc_auc",
        answers=_key("id", test_ids, {"has_cactus": cactus["test"]}),
        train_key=_key("id", train_ids, {"has_cactus": cactus["train"]}),
        expect=_expect(id_col="id", label_source="csv", labels_file="train.csv", label_column="has_cactus",
                       n_train=n_train, n_test=n_test, classes=[0, 1], image_format=".jpg",
                       archives=["train.zip", "test.zip"]))


@_competition("histopathologic-cancer-detection")
def _histopathologic(out: Path, seed: int, n_train: int, n_test: int) -> Layout:
    """96x96 RGB TIFF patches named by 40-hex ids; train_labels.csv id,label (~40% positive)."""
    rng = _rng(out, seed)
    s = _split(seed, 10, n_train, n_test)
    ids = _hex_ids(rng, n_train + n_test, 40)
    train_ids, test_ids = ids[:n_train], ids[n_train:]
    train_y, test_y = (s.train_digits >= 6).astype(int), (s.test_digits >= 6).astype(int)
    _write_csv(_key("id", train_ids, {"label": train_y}), out / "train_labels.csv")
    _save_pictures(out / "train", [f"{i}.tif" for i in train_ids], _pictures(s.train_images, (96, 96), rng))
    _save_pictures(out / "test", [f"{i}.tif" for i in test_ids], _pictures(s.test_images, (96, 96), rng))
    _write_csv(_key("id", test_ids, {"label": 0}), out / SAMPLE)
    return Layout(
        name=out.name, data_dir=out, target="binary_proba", metric="roc_auc",
        answers=_key("id", test_ids, {"label": test_y}),
        train_key=_key("id", train_ids, {"label": train_y}),
        expect=_expect(id_col="id", label_source="csv", labels_file="train_labels.csv", label_column="label",
                       n_train=n_train, n_test=n_test, classes=[0, 1], image_format=".tif"))


DOG_BREEDS = ("affenpinscher", "afghan_hound", "beagle", "boxer", "chihuahua", "pug")


@_competition("dog-breed-identification")
def _dog_breed(out: Path, seed: int, n_train: int, n_test: int) -> Layout:
    """labels.csv id,breed; train/ and test/ JPEGs; one probability column per breed, alphabetical."""
    rng = _rng(out, seed)
    s = _split(seed, len(DOG_BREEDS), n_train, n_test)
    ids = _hex_ids(rng, n_train + n_test, 32)
    train_ids, test_ids = ids[:n_train], ids[n_train:]
    train_y, test_y = [DOG_BREEDS[d] for d in s.train_digits], [DOG_BREEDS[d] for d in s.test_digits]
    breeds = sorted(DOG_BREEDS)
    _write_csv(pd.DataFrame({"id": train_ids, "breed": train_y}), out / "labels.csv")
    _save_pictures(out / "train", [f"{i}.jpg" for i in train_ids], _pictures(s.train_images, (64, 48), rng))
    _save_pictures(out / "test", [f"{i}.jpg" for i in test_ids], _pictures(s.test_images, (64, 48), rng))
    _write_csv(_key("id", test_ids, {b: 1 / len(breeds) for b in breeds}), out / SAMPLE)
    return Layout(
        name=out.name, data_dir=out, target="class_proba", metric="log_loss",
        answers=_key("id", test_ids, _one_hot(test_y, breeds)),
        train_key=_key("id", train_ids, _one_hot(train_y, breeds)),
        expect=_expect(id_col="id", label_source="csv", labels_file="labels.csv", label_column="breed",
                       n_train=n_train, n_test=n_test, classes=breeds, image_format=".jpg"))


SEEDLING_SPECIES = ("Black-grass", "Charlock", "Common Chickweed", "Loose Silky-bent", "Sugar beet")


@_competition("plant-seedlings-classification")
def _plant_seedlings(out: Path, seed: int, n_train: int, n_test: int) -> Layout:
    """Labels are folder names (with spaces): train/<Species>/<9-hex>.png; test/ is flat."""
    rng = _rng(out, seed)
    s = _split(seed, len(SEEDLING_SPECIES), n_train, n_test)
    files = [f"{h}.png" for h in _hex_ids(rng, n_train + n_test, 9)]
    train_files, test_files = files[:n_train], files[n_train:]
    train_y, test_y = [SEEDLING_SPECIES[d] for d in s.train_digits], [SEEDLING_SPECIES[d] for d in s.test_digits]
    for name, species, picture in zip(train_files, train_y, _pictures(s.train_images, (64, 64), rng)):
        _save_pictures(out / "train" / species, [name], [picture])
    _save_pictures(out / "test", test_files, _pictures(s.test_images, (64, 64), rng))
    _write_csv(_key("file", test_files, {"species": "Sugar beet"}), out / SAMPLE)
    return Layout(
        name=out.name, data_dir=out, target="label", metric="f1_micro",
        answers=_key("file", test_files, {"species": test_y}),
        train_key=_key("file", train_files, {"species": train_y}),
        expect=_expect(id_col="file", label_source="folders", labels_file=None, label_column=None,
                       n_train=n_train, n_test=n_test, classes=SEEDLING_SPECIES, image_format=".png"))


@_competition("dogs-vs-cats-redux-kernels-edition")
def _dogs_vs_cats(out: Path, seed: int, n_train: int, n_test: int) -> Layout:
    """The label is in the file name: train.zip holds train/cat.<i>.jpg and train/dog.<i>.jpg
    (counted from 0 per class), test.zip holds test/<i>.jpg (from 1); the submission is P(dog)."""
    rng = _rng(out, seed)
    s = _split(seed, 10, n_train, n_test)
    is_dog = {"train": (s.train_digits >= 5).astype(int), "test": (s.test_digits >= 5).astype(int)}
    seen = Counter()
    train_names = []
    for dog in is_dog["train"]:
        animal = "dog" if dog else "cat"
        train_names.append(f"{animal}.{seen[animal]}.jpg")
        seen[animal] += 1
    test_ids = list(range(1, n_test + 1))
    _write_zip(out / "train.zip", "train", train_names, _pictures(s.train_images, (64, 48), rng))
    _write_zip(out / "test.zip", "test", [f"{i}.jpg" for i in test_ids], _pictures(s.test_images, (64, 48), rng))
    _write_csv(_key("id", test_ids, {"label": 0.5}), out / SAMPLE)
    return Layout(
        name=out.name, data_dir=out, target="binary_proba", metric="log_loss",
        answers=_key("id", test_ids, {"label": is_dog["test"]}),
        train_key=_key("id", [Path(n).stem for n in train_names], {"label": is_dog["train"]}),
        expect=_expect(id_col="id", label_source="filename", labels_file=None, label_column=None,
                       n_train=n_train, n_test=n_test, classes=["cat", "dog"], image_format=".jpg",
                       archives=["train.zip", "test.zip"]))


PATHOLOGY_2020 = ("healthy", "multiple_diseases", "rust", "scab")


@_competition("plant-pathology-2020-fgvc7")
def _plant_pathology_2020(out: Path, seed: int, n_train: int, n_test: int) -> Layout:
    """One-hot train.csv (one 1 per row); train and test images share images/ (Train_<i>, Test_<i>)."""
    rng = _rng(out, seed)
    s = _split(seed, len(PATHOLOGY_2020), n_train, n_test)
    classes = list(PATHOLOGY_2020)
    train_ids, test_ids = [f"Train_{i}" for i in range(n_train)], [f"Test_{i}" for i in range(n_test)]
    train_hot = _one_hot([classes[d] for d in s.train_digits], classes)
    test_hot = _one_hot([classes[d] for d in s.test_digits], classes)
    _write_csv(_key("image_id", train_ids, train_hot), out / "train.csv")
    _write_csv(pd.DataFrame({"image_id": test_ids}), out / "test.csv")
    _save_pictures(out / "images", [f"{i}.jpg" for i in train_ids], _pictures(s.train_images, (64, 43), rng))
    _save_pictures(out / "images", [f"{i}.jpg" for i in test_ids], _pictures(s.test_images, (64, 43), rng))
    _write_csv(_key("image_id", test_ids, {c: 0.25 for c in classes}), out / SAMPLE)
    return Layout(
        name=out.name, data_dir=out, target="class_proba", metric="mean_column_auc",
        answers=_key("image_id", test_ids, test_hot),
        train_key=_key("image_id", train_ids, train_hot),
        expect=_expect(id_col="image_id", label_source="csv", labels_file="train.csv", label_column=None,
                       n_train=n_train, n_test=n_test, classes=classes, image_format=".jpg"))


# digit -> the space-separated labels of a leaf (healthy is never combined, as in the real data)
PATHOLOGY_2021 = ("healthy", "scab", "rust", "complex", "powdery_mildew", "frog_eye_leaf_spot",
                  "scab frog_eye_leaf_spot", "rust frog_eye_leaf_spot", "frog_eye_leaf_spot complex",
                  "powdery_mildew complex")


@_competition("plant-pathology-2021-fgvc8")
def _plant_pathology_2021(out: Path, seed: int, n_train: int, n_test: int) -> Layout:
    """train.csv image,labels with space-separated labels; train_images/ and test_images/; no test.csv."""
    rng = _rng(out, seed)
    s = _split(seed, 10, n_train, n_test)
    names = [f"{h}.jpg" for h in _hex_ids(rng, n_train + n_test, 16)]
    train_names, test_names = names[:n_train], names[n_train:]
    train_y, test_y = [PATHOLOGY_2021[d] for d in s.train_digits], [PATHOLOGY_2021[d] for d in s.test_digits]
    _write_csv(pd.DataFrame({"image": train_names, "labels": train_y}), out / "train.csv")
    _save_pictures(out / "train_images", train_names, _pictures(s.train_images, (64, 43), rng))
    _save_pictures(out / "test_images", test_names, _pictures(s.test_images, (64, 43), rng))
    _write_csv(_key("image", test_names, {"labels": "healthy"}), out / SAMPLE)
    return Layout(
        name=out.name, data_dir=out, target="label_list", metric="f1_samples",
        answers=_key("image", test_names, {"labels": test_y}),
        train_key=_key("image", train_names, {"labels": train_y}),
        expect=_expect(id_col="image", label_source="csv", labels_file="train.csv", label_column="labels",
                       n_train=n_train, n_test=n_test, classes={t for y in PATHOLOGY_2021 for t in y.split()},
                       image_format=".jpg"))


CASSAVA_DISEASES = {"0": "Cassava Bacterial Blight (CBB)", "1": "Cassava Brown Streak Disease (CBSD)",
                    "2": "Cassava Green Mottle (CGM)", "3": "Cassava Mosaic Disease (CMD)", "4": "Healthy"}


@_competition("cassava-leaf-disease-classification")
def _cassava(out: Path, seed: int, n_train: int, n_test: int) -> Layout:
    """train.csv image_id,label (ints 0-4) with a JSON of their names; TFRecord copies sit beside the
    JPEG folders (here placeholder files that a reader must leave alone)."""
    rng = _rng(out, seed)
    s = _split(seed, len(CASSAVA_DISEASES), n_train, n_test)
    names = [f"{n}.jpg" for n in _number_ids(rng, n_train + n_test, 10)]
    train_names, test_names = names[:n_train], names[n_train:]
    _write_csv(pd.DataFrame({"image_id": train_names, "label": s.train_digits}), out / "train.csv")
    (out / "label_num_to_disease_map.json").write_text(json.dumps(CASSAVA_DISEASES))
    _save_pictures(out / "train_images", train_names, _pictures(s.train_images, (64, 48), rng))
    _save_pictures(out / "test_images", test_names, _pictures(s.test_images, (64, 48), rng))
    half = n_train // 2
    for path in (out / f"train_tfrecords/ld_train00-{half}.tfrec",
                 out / f"train_tfrecords/ld_train01-{n_train - half}.tfrec",
                 out / f"test_tfrecords/ld_test00-{n_test}.tfrec"):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(rng.bytes(64))
    _write_csv(_key("image_id", test_names, {"label": 4}), out / SAMPLE)
    return Layout(
        name=out.name, data_dir=out, target="label", metric="accuracy",
        answers=_key("image_id", test_names, {"label": s.test_digits}),
        train_key=_key("image_id", train_names, {"label": s.train_digits}),
        expect=_expect(id_col="image_id", label_source="csv", labels_file="train.csv", label_column="label",
                       n_train=n_train, n_test=n_test, classes=CASSAVA_DISEASES, image_format=".jpg"))


@_competition("aptos2019-blindness-detection")
def _aptos(out: Path, seed: int, n_train: int, n_test: int) -> Layout:
    """train.csv id_code,diagnosis (ordinal 0-4, scored by quadratic weighted kappa); PNG fundus images."""
    rng = _rng(out, seed)
    s = _split(seed, 5, n_train, n_test)
    ids = _hex_ids(rng, n_train + n_test, 12)
    train_ids, test_ids = ids[:n_train], ids[n_train:]
    _write_csv(pd.DataFrame({"id_code": train_ids, "diagnosis": s.train_digits}), out / "train.csv")
    _write_csv(pd.DataFrame({"id_code": test_ids}), out / "test.csv")
    _save_pictures(out / "train_images", [f"{i}.png" for i in train_ids], _pictures(s.train_images, (64, 64), rng))
    _save_pictures(out / "test_images", [f"{i}.png" for i in test_ids], _pictures(s.test_images, (64, 64), rng))
    _write_csv(_key("id_code", test_ids, {"diagnosis": 0}), out / SAMPLE)
    return Layout(
        name=out.name, data_dir=out, target="label", metric="qwk",
        answers=_key("id_code", test_ids, {"diagnosis": s.test_digits}),
        train_key=_key("id_code", train_ids, {"diagnosis": s.train_digits}),
        expect=_expect(id_col="id_code", label_source="csv", labels_file="train.csv", label_column="diagnosis",
                       n_train=n_train, n_test=n_test, classes=range(5), image_format=".png"))


ISIC_SITES = ("torso", "lower extremity", "upper extremity", "head/neck", "palms/soles", "oral/genital")
ISIC_BENIGN = ("unknown", "nevus", "seborrheic keratosis", "lentigo NOS")


def _isic_metadata(rng: np.random.Generator, names: list[str]) -> pd.DataFrame:
    """Patients with several lesions each (sex and age per patient), a body site per lesion, some missing."""
    n_patients = max(1, len(names) // 4)
    patients = pd.DataFrame({
        "patient_id": [f"IP_{n}" for n in _number_ids(rng, n_patients, 7)],
        "sex": rng.choice(["male", "female"], n_patients),
        "age_approx": rng.integers(4, 18, n_patients) * 5.0,
    })
    rows = patients.iloc[rng.integers(n_patients, size=len(names))].reset_index(drop=True)
    sites = rng.choice(ISIC_SITES, len(names), p=[0.5, 0.25, 0.13, 0.06, 0.03, 0.03])
    rows["anatom_site_general_challenge"] = np.where(rng.random(len(names)) < 0.05, "", sites)
    rows.insert(0, "image_name", names)
    return rows


def _write_dicom(path: Path, picture: Image.Image, meta: pd.Series) -> None:
    """An uncompressed RGB secondary-capture DICOM (Modality OT) of `picture`, with stable UIDs."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = np.asarray(picture.convert("RGB"))
    name = meta["image_name"]
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[name, "instance"])
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = file_meta
    ds.SOPClassUID = file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[name, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[name, "series"])
    ds.Modality = "OT"
    ds.PatientID = meta["patient_id"]
    ds.PatientName = name
    ds.PatientSex = meta["sex"][:1].upper()
    ds.PatientAge = f"{int(meta['age_approx']):03d}Y"
    ds.BodyPartExamined = meta["anatom_site_general_challenge"].upper().replace("/", " ")[:16]
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


@_competition("siim-isic-melanoma-classification")
def _siim_isic(out: Path, seed: int, n_train: int, n_test: int) -> Layout:
    """Patient metadata in train.csv/test.csv; each lesion twice: jpeg/<split>/<name>.jpg and
    <split>/<name>.dcm (the same pixels as DICOM); ~10% malignant."""
    rng = _rng(out, seed)
    s = _split(seed, 10, n_train, n_test)
    names = [f"ISIC_{n}" for n in _number_ids(rng, n_train + n_test, 7)]
    train, test = _isic_metadata(rng, names[:n_train]), _isic_metadata(rng, names[n_train:])
    train_y, test_y = (s.train_digits == 9).astype(int), (s.test_digits == 9).astype(int)
    benign = rng.choice(ISIC_BENIGN, n_train, p=[0.8, 0.15, 0.03, 0.02])
    train["diagnosis"] = np.where(train_y == 1, "melanoma", benign)
    train["benign_malignant"] = np.where(train_y == 1, "malignant", "benign")
    train["target"] = train_y
    _write_csv(train, out / "train.csv")
    _write_csv(test, out / "test.csv")
    for split, meta, images in (("train", train, s.train_images), ("test", test, s.test_images)):
        pictures = _pictures(images, (64, 64), rng)
        _save_pictures(out / "jpeg" / split, [f"{n}.jpg" for n in meta["image_name"]], pictures)
        for (_, row), picture in zip(meta.iterrows(), pictures, strict=True):
            _write_dicom(out / split / f"{row['image_name']}.dcm", picture, row)
    _write_csv(_key("image_name", test["image_name"], {"target": 0}), out / SAMPLE)
    return Layout(
        name=out.name, data_dir=out, target="binary_proba", metric="roc_auc",
        answers=_key("image_name", test["image_name"], {"target": test_y}),
        train_key=_key("image_name", train["image_name"], {"target": train_y}),
        expect=_expect(id_col="image_name", label_source="csv", labels_file="train.csv", label_column="target",
                       n_train=n_train, n_test=n_test, classes=[0, 1], image_format=".jpg"))


RANZCR_COLUMNS = ("ETT - Abnormal", "ETT - Borderline", "ETT - Normal", "NGT - Abnormal", "NGT - Borderline",
                  "NGT - Incompletely Imaged", "NGT - Normal", "CVC - Abnormal", "CVC - Borderline",
                  "CVC - Normal", "Swan Ganz Catheter Present")
# digit -> the lines present (at most one finding per tube type; every column has positives and negatives)
RANZCR_FINDINGS = {
    0: ("NGT - Normal", "CVC - Normal", "Swan Ganz Catheter Present"),
    1: ("ETT - Abnormal", "CVC - Abnormal"),
    2: ("ETT - Borderline", "CVC - Borderline"),
    3: ("ETT - Normal", "NGT - Normal", "CVC - Normal"),
    4: ("ETT - Normal", "CVC - Abnormal"),
    5: ("ETT - Normal", "NGT - Incompletely Imaged", "CVC - Normal"),
    6: ("NGT - Abnormal", "CVC - Normal"),
    7: ("NGT - Borderline", "CVC - Borderline"),
    8: ("CVC - Normal",),
    9: ("ETT - Normal", "NGT - Normal", "CVC - Normal", "Swan Ganz Catheter Present"),
}


def _ranzcr_annotations(rng: np.random.Generator, uids: list[str], findings: pd.DataFrame, n: int = 5) -> pd.DataFrame:
    """A few line tracings (`[[x, y], ...]` in full-resolution pixels), as in train_annotations.csv."""
    rows = []
    for i in rng.choice(len(uids), size=min(n, len(uids)), replace=False):
        present = [c for c in RANZCR_COLUMNS[:-1] if findings.iloc[i][c] == 1]
        if present:
            points = rng.integers(0, 2500, size=(int(rng.integers(4, 9)), 2))
            data = "[" + ", ".join(f"[{x}, {y}]" for x, y in points) + "]"
            rows.append({"StudyInstanceUID": uids[i], "label": str(rng.choice(present)), "data": data})
    return pd.DataFrame(rows, columns=["StudyInstanceUID", "label", "data"])


@_competition("ranzcr-clip-catheter-line-classification")
def _ranzcr(out: Path, seed: int, n_train: int, n_test: int) -> Layout:
    """11 multi-hot columns plus PatientID in train.csv, grey X-ray JPEGs named by DICOM UIDs, and
    train_annotations.csv (line tracings, not labels)."""
    rng = _rng(out, seed)
    s = _split(seed, 10, n_train, n_test)
    uids = ["1.2.826.0.1.3680043.8.498." + str(int(rng.integers(1, 10)))
            + "".join(map(str, rng.integers(0, 10, 37))) for _ in range(n_train + n_test)]
    train_uids, test_uids = uids[:n_train], uids[n_train:]
    columns = list(RANZCR_COLUMNS)

    def multi_hot(digits):
        return pd.DataFrame([[int(c in RANZCR_FINDINGS[d]) for c in columns] for d in digits], columns=columns)

    train_y, test_y = multi_hot(s.train_digits), multi_hot(s.test_digits)
    train = _key("StudyInstanceUID", train_uids, train_y)
    patients = _hex_ids(rng, max(1, n_train // 3), 9)
    train["PatientID"] = [patients[i] for i in rng.integers(len(patients), size=n_train)]
    _write_csv(train, out / "train.csv")
    _write_csv(_ranzcr_annotations(rng, train_uids, train_y), out / "train_annotations.csv")
    grey = {"colour": False}
    _save_pictures(out / "train", [f"{u}.jpg" for u in train_uids], _pictures(s.train_images, (64, 64), rng, **grey))
    _save_pictures(out / "test", [f"{u}.jpg" for u in test_uids], _pictures(s.test_images, (64, 64), rng, **grey))
    _write_csv(_key("StudyInstanceUID", test_uids, {c: 0 for c in columns}), out / SAMPLE)
    return Layout(
        name=out.name, data_dir=out, target="multilabel_proba", metric="mean_column_auc",
        answers=_key("StudyInstanceUID", test_uids, test_y),
        train_key=_key("StudyInstanceUID", train_uids, train_y),
        expect=_expect(id_col="StudyInstanceUID", label_source="csv", labels_file="train.csv", label_column=None,
                       n_train=n_train, n_test=n_test, classes=columns, image_format=".jpg"))


# digit -> whale; unrecognised whales (several digits) are all new_whale, the most frequent label
WHALES = ("new_whale", "w_23a388d", "w_9b5109b", "w_9c506f6", "w_0369a5c", "w_f48451c", "w_c3d896a",
          "w_20df2c5", "new_whale", "new_whale")
WHALE_SAMPLE = "new_whale w_23a388d w_9b5109b w_9c506f6 w_0369a5c"


@_competition("humpback-whale-identification")
def _humpback(out: Path, seed: int, n_train: int, n_test: int) -> Layout:
    """train.csv Image,Id (one whale per image, or new_whale); five guesses per test image, MAP@5."""
    rng = _rng(out, seed)
    s = _split(seed, 10, n_train, n_test)
    names = [f"{h}.jpg" for h in _hex_ids(rng, n_train + n_test, 9)]
    train_names, test_names = names[:n_train], names[n_train:]
    train_y, test_y = [WHALES[d] for d in s.train_digits], [WHALES[d] for d in s.test_digits]
    _write_csv(pd.DataFrame({"Image": train_names, "Id": train_y}), out / "train.csv")
    _save_pictures(out / "train", train_names, _pictures(s.train_images, (64, 32), rng))
    _save_pictures(out / "test", test_names, _pictures(s.test_images, (64, 32), rng))
    _write_csv(_key("Image", test_names, {"Id": WHALE_SAMPLE}), out / SAMPLE)
    return Layout(
        name=out.name, data_dir=out, target="topk", metric="map@5",
        answers=_key("Image", test_names, {"Id": test_y}),
        train_key=_key("Image", train_names, {"Id": train_y}),
        expect=_expect(id_col="Image", label_source="csv", labels_file="train.csv", label_column="Id",
                       n_train=n_train, n_test=n_test, classes=WHALES, image_format=".jpg"))


CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer")


@_competition("cifar-10")
def _cifar10(out: Path, seed: int, n_train: int, n_test: int) -> Layout:
    """trainLabels.csv id,label with integer ids from 1; 32x32 PNGs inside train.7z and test.7z."""
    rng = _rng(out, seed)
    s = _split(seed, len(CIFAR_CLASSES), n_train, n_test)
    train_ids, test_ids = list(range(1, n_train + 1)), list(range(1, n_test + 1))
    train_y, test_y = [CIFAR_CLASSES[d] for d in s.train_digits], [CIFAR_CLASSES[d] for d in s.test_digits]
    _write_csv(pd.DataFrame({"id": train_ids, "label": train_y}), out / "trainLabels.csv")
    pixel_art = {"resample": Image.NEAREST}
    _write_7z(out / "train.7z", "train", [f"{i}.png" for i in train_ids],
              _pictures(s.train_images, (32, 32), rng, **pixel_art))
    _write_7z(out / "test.7z", "test", [f"{i}.png" for i in test_ids],
              _pictures(s.test_images, (32, 32), rng, **pixel_art))
    _write_csv(_key("id", test_ids, {"label": "cat"}), out / SAMPLE)
    return Layout(
        name=out.name, data_dir=out, target="label", metric="accuracy",
        answers=_key("id", test_ids, {"label": test_y}),
        train_key=_key("id", train_ids, {"label": train_y}),
        expect=_expect(id_col="id", label_source="csv", labels_file="trainLabels.csv", label_column="label",
                       n_train=n_train, n_test=n_test, classes=CIFAR_CLASSES, image_format=".png",
                       archives=["train.7z", "test.7z"]))


def _planet_tags(digit: int) -> str:
    """Tags from properties of the digit: one weather tag; cloudy scenes show nothing else."""
    if digit == 0:
        return "cloudy"
    tags = {"haze" if digit in (1, 2) else "clear", "primary"}
    tags |= {"agriculture"} if digit % 2 == 0 else set()
    tags |= {"water"} if digit in (6, 8, 9) else set()  # a closed loop
    tags |= {"road"} if digit > 5 else set()
    tags |= {"habitation"} if digit % 3 == 0 else set()
    return " ".join(sorted(tags))


@_competition("planet-understanding-the-amazon-from-space")
def _planet(out: Path, seed: int, n_train: int, n_test: int) -> Layout:
    """train_v2.csv image_name,tags (no extension, space-separated tags); train-jpg/ and test-jpg/;
    the sample is sample_submission_v2.csv."""
    rng = _rng(out, seed)
    s = _split(seed, 10, n_train, n_test)
    train_names, test_names = [f"train_{i}" for i in range(n_train)], [f"test_{i}" for i in range(n_test)]
    train_y, test_y = [_planet_tags(d) for d in s.train_digits], [_planet_tags(d) for d in s.test_digits]
    _write_csv(pd.DataFrame({"image_name": train_names, "tags": train_y}), out / "train_v2.csv")
    _save_pictures(out / "train-jpg", [f"{n}.jpg" for n in train_names], _pictures(s.train_images, (64, 64), rng))
    _save_pictures(out / "test-jpg", [f"{n}.jpg" for n in test_names], _pictures(s.test_images, (64, 64), rng))
    sample = "sample_submission_v2.csv"
    _write_csv(_key("image_name", test_names, {"tags": "primary clear agriculture road water"}), out / sample)
    return Layout(
        name=out.name, data_dir=out, target="label_list", metric="f2_samples",
        answers=_key("image_name", test_names, {"tags": test_y}),
        train_key=_key("image_name", train_names, {"tags": train_y}),
        expect=_expect(id_col="image_name", label_source="csv", labels_file="train_v2.csv", label_column="tags",
                       n_train=n_train, n_test=n_test, classes={t for d in range(10) for t in _planet_tags(d).split()},
                       image_format=".jpg", sample_submission=sample))


LEAF_SPECIES = ("Acer_Capillipes", "Acer_Circinatum", "Acer_Mono", "Acer_Opalus", "Acer_Palmatum", "Acer_Pictum")
LEAF_FEATURES = 8  # of each family (the competition has 64 margin, 64 shape and 64 texture columns)


def _leaf_features(images: np.ndarray) -> pd.DataFrame:
    """Three normalised 8-bin histograms per leaf, like the published margin/shape/texture columns:
    the digit's row sums, its column sums and the histogram of its grey levels."""
    ink = images.astype(np.float64) + 1e-9
    families = {
        "margin": ink.sum(axis=2),
        "shape": ink.sum(axis=1),
        "texture": np.stack([np.histogram(img, bins=LEAF_FEATURES, range=(0, 256))[0] for img in images]),
    }
    columns = {}
    for family, values in families.items():
        values = values / values.sum(axis=1, keepdims=True)
        for k in range(LEAF_FEATURES):
            columns[f"{family}{k + 1}"] = values[:, k].round(6)
    return pd.DataFrame(columns)


@_competition("leaf-classification")
def _leaf(out: Path, seed: int, n_train: int, n_test: int) -> Layout:
    """Tabular features in train.csv/test.csv, the label is `species`; grey silhouettes images/<id>.jpg
    with integer ids 1..n shared out between train and test."""
    rng = _rng(out, seed)
    s = _split(seed, len(LEAF_SPECIES), n_train, n_test)
    ids = rng.permutation(np.arange(1, n_train + n_test + 1))
    order = {"train": np.argsort(ids[:n_train]), "test": np.argsort(ids[n_train:])}  # files list ids ascending
    train_ids, test_ids = ids[:n_train][order["train"]], ids[n_train:][order["test"]]
    train_images, test_images = s.train_images[order["train"]], s.test_images[order["test"]]
    train_y = [LEAF_SPECIES[d] for d in s.train_digits[order["train"]]]
    test_y = [LEAF_SPECIES[d] for d in s.test_digits[order["test"]]]
    train = _key("id", train_ids, _leaf_features(train_images))
    train.insert(1, "species", train_y)
    _write_csv(train, out / "train.csv")
    _write_csv(_key("id", test_ids, _leaf_features(test_images)), out / "test.csv")
    silhouette = {"colour": False, "resample": Image.NEAREST}
    for ids_, images in ((train_ids, train_images), (test_ids, test_images)):
        _save_pictures(out / "images", [f"{i}.jpg" for i in ids_], _pictures(images, (64, 64), rng, **silhouette))
    species = sorted(LEAF_SPECIES)
    _write_csv(_key("id", test_ids, {c: 1 / len(species) for c in species}), out / SAMPLE)
    return Layout(
        name=out.name, data_dir=out, target="class_proba", metric="log_loss",
        answers=_key("id", test_ids, _one_hot(test_y, species)),
        train_key=_key("id", train_ids, _one_hot(train_y, species)),
        expect=_expect(id_col="id", label_source="csv", labels_file="train.csv", label_column="species",
                       n_train=n_train, n_test=n_test, classes=species, image_format=".jpg"))
