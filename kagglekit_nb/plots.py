"""Plots of a run, saved as `<run folder>/plots/NAME.png` and shown inline in a notebook kernel.

    kk.plots.training_curves(run)            # loss and score per fold and epoch (history.csv)
    kk.plots.time_bar(run)                   # time per phase against the budget (run.json)
    kk.plots.confusion_matrix(y_true, y_pred, classes, run)
    kk.plots.overlays(images, masks_true, masks_pred, run)        # segmentation tiles
    kk.plots.roc_pauc(y_true, scores, run, min_tpr=0.8)           # ROC with the pAUC region

Every function takes `run` (a Run or the path of a run folder) and returns the PNG's path.
Figures are drawn on matplotlib's Agg canvas without pyplot: no backend is switched, no figure is
left registered (nothing accumulates over a long session), and nothing is printed outside a
kernel. In a kernel (Jupyter, Colab, Kaggle, papermill) the saved PNG is displayed.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .cv import HISTORY_FILE
from .run import RUN_FILE

__all__ = ["PLOTS_DIR", "SEGMENTATION_CLASSES", "SEGMENTATION_COLOURS", "confusion_matrix", "overlays",
           "roc_pauc", "time_bar", "training_curves"]

PLOTS_DIR = "plots"
HISTORY_COLUMNS = ("fold", "epoch", "train_loss", "val_loss", "score")
SEGMENTATION_CLASSES = ("background", "glacier", "debris", "lake")
SEGMENTATION_COLOURS = ("#202020", "#bfe6ff", "#b5651d", "#1e5bd8")
_LABEL_ENCODING = (0, 85, 170, 255)  # GlacierHack's label files: class k is stored as 85 * k
_PHASE_COLOURS = {"setup": "#8da0cb", "train": "#66c2a5", "predict": "#fc8d62", "verify": "#e78ac3"}


# --------------------------------------------------------------------------- shared


def _run_dir(run: Any) -> Path:
    if hasattr(run, "dir"):
        path = Path(run.dir)
    elif isinstance(run, (str, os.PathLike)):
        path = Path(run).expanduser()
    else:
        raise ValueError(f"run={run!r} must be a Run (from start_run) or the path of a run folder.")
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {path} does not exist: pass the Run from start_run, or the "
                                "folder that holds its run.json.")
    return path


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or any(c in name for c in "/\\\0") or name in (".", ".."):
        raise ValueError(f"name={name!r} must be a plain file name without extension, e.g. 'confusion_fold0'.")
    return name


def _figure(width: float, height: float, **kwargs: Any) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _in_kernel() -> bool:
    from .env import _current_ipython

    shell = _current_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _save(fig: Any, run: Any, name: str, show: bool | None) -> Path:
    """Write the figure to <run>/plots/<name>.png (tmp + replace), release it, display it in a kernel."""
    folder = _run_dir(run) / PLOTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_check_name(name)}.png"
    from ._atomic import write_atomic

    try:
        write_atomic(path, lambda fh: fig.savefig(fh, format="png"), binary=True)
    finally:
        fig.clear()
    if _in_kernel() if show is None else show:
        from IPython.display import Image, display

        display(Image(filename=str(path)))
    return path


def _vector(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one value per sample (1-D); got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError(f"{what} is empty: there is nothing to plot.")
    return arr


def _same_length(a: np.ndarray, b: np.ndarray, names: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{names} must have the same length; got {len(a)} and {len(b)}.")


def _record(run: Any) -> dict[str, Any]:
    """The run's record: the live budget of a Run (current to the second), else its run.json."""
    budget = getattr(run, "budget", None)
    if budget is not None and hasattr(budget, "summary"):
        return {**getattr(run, "record", {}), **budget.summary()}
    path = _run_dir(run) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: start_run writes it when a run opens (and Run.save at "
                                "each step); pass the folder of a run.")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not readable JSON ({e}): re-run the notebook to rewrite it.") from e


# --------------------------------------------------------------------------- training curves


def _metric_name(run: Any, metric: str | None) -> str:
    if metric is not None:
        return metric
    config = getattr(run, "config", None)
    if not isinstance(config, dict):
        path = _run_dir(run) / RUN_FILE
        try:
            config = json.loads(path.read_text()).get("config", {}) if path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            config = {}
    name = config.get("METRIC") if isinstance(config, dict) else None
    return name if isinstance(name, str) else "score"


def training_curves(run: Any, *, metric: str | None = None, show: bool | None = None,
                    name: str = "training_curves") -> Path:
    """Train and validation loss (left) and the validation score (right) by epoch, one colour per
    fold, from `<run>/history.csv`; the best epoch of each fold is marked when the metric is known
    (`metric`, else the run's METRIC)."""
    import pandas as pd

    path = _run_dir(run) / HISTORY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: kagglekit_nb.cv (train_folds) writes it when a training "
                                "epoch ends. Train at least one epoch first, or pass the folder of a run that did.")
    try:
        history = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a readable CSV file ({e}).") from e
    missing = [c for c in HISTORY_COLUMNS if c not in history.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}; it needs {', '.join(HISTORY_COLUMNS)} "
                         "(one row per finished epoch, as kagglekit_nb.cv writes it).")
    if history.empty:
        raise ValueError(f"{path} has no rows: no training epoch has finished yet.")
    metric_name = _metric_name(run, metric)
    greater = None
    try:
        from .metrics import get_metric

        greater = get_metric(metric_name).greater_is_better
    except ValueError:  # a metric this kit does not know: no best-epoch marks
        pass

    fig = _figure(11, 4)
    ax_loss, ax_score = fig.subplots(1, 2)
    colours = _cycle()
    for i, (fold, rows) in enumerate(history.sort_values(["fold", "epoch"]).groupby("fold", sort=True)):
        colour = colours[i % len(colours)]
        ax_loss.plot(rows["epoch"], rows["train_loss"], "-", color=colour, label=f"fold {fold} train")
        ax_loss.plot(rows["epoch"], rows["val_loss"], "--", color=colour, label=f"fold {fold} val")
        ax_score.plot(rows["epoch"], rows["score"], "-o", color=colour, markersize=3, label=f"fold {fold}")
        scores = rows["score"].to_numpy(dtype=float)
        if greater is not None and np.isfinite(scores).any():
            best = int(np.nanargmax(scores) if greater else np.nanargmin(scores))
            ax_score.plot(rows["epoch"].iloc[best], scores[best], "*", color=colour, markersize=12)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss (solid: train, dashed: validation)")
    ax_score.set(xlabel="epoch", ylabel=metric_name,
                 title=f"validation {metric_name}" + (" (star: best epoch)" if greater is not None else ""))
    for ax in (ax_loss, ax_score):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize="small", ncol=2)
    ax_score.legend(fontsize="small")
    return _save(fig, run, name, show)


def _cycle() -> list[str]:
    from matplotlib import rcParams

    return list(rcParams["axes.prop_cycle"].by_key()["color"])


# --------------------------------------------------------------------------- time bar


def _duration(seconds: float) -> str:
    from .ui import format_duration

    return format_duration(seconds)


def time_bar(run: Any, *, show: bool | None = None, name: str = "time_bar") -> Path:
    """Time per phase (setup, train, predict, verify, ...) stacked against the budget, with the time
    not accounted to a phase ("other") and the unused part of the budget; the reserve kept for
    predict + verify is marked. A Run gives its live budget; a folder its run.json."""
    record = _record(run)
    phases = record.get("phases")
    if not isinstance(phases, dict) or not phases:
        raise ValueError("the run records no phases (run.json 'phases' is empty): nothing was timed yet. "
                         "Plot after training (train_folds times setup and train; predict and verify follow).")
    bad = {k: v for k, v in phases.items()
           if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0}
    if bad:
        raise ValueError(f"run.json phases {bad} are not durations in seconds (numbers >= 0).")
    elapsed = record.get("elapsed_s")
    total = sum(phases.values())
    elapsed = float(elapsed) if isinstance(elapsed, (int, float)) and not isinstance(elapsed, bool) else total
    budget = record.get("budget_s")
    budget = float(budget) if isinstance(budget, (int, float)) and not isinstance(budget, bool) and budget > 0 \
        else None

    order = [p for p in _PHASE_COLOURS if p in phases] + [p for p in phases if p not in _PHASE_COLOURS]
    segments = [(p, float(phases[p]), _PHASE_COLOURS.get(p)) for p in order]
    other = elapsed - total
    if other > max(0.5, 0.005 * elapsed):
        segments.append(("other", other, "#bdbdbd"))
    fig = _figure(10, 3.2)
    ax = fig.subplots()
    left = 0.0
    extra = iter(_cycle()[4:] or ["#999999"])
    for label, seconds, colour in segments:
        ax.barh(0, seconds, left=left, color=colour or next(extra, "#999999"), edgecolor="white",
                label=f"{label} {_duration(seconds)}")
        left += seconds
    span = max(left, elapsed, budget or 0.0) or 1.0
    start = 0.0
    for label, seconds, _ in segments:  # names inside the segments wide enough to hold them
        if seconds / span > 0.08:
            ax.text(start + seconds / 2, 0, f"{label}\n{_duration(seconds)}", ha="center", va="center",
                    fontsize="small")
        start += seconds
    if budget is not None:
        unused = budget - left
        if unused > 0:
            ax.barh(0, unused, left=left, color="white", edgecolor="#9e9e9e", hatch="//",
                    label=f"unused {_duration(unused)}")
        ax.axvline(budget, color="#c62828" if elapsed > budget else "black", linewidth=2,
                   label=f"budget {_duration(budget)}")
        reserve = record.get("reserve_s")
        if isinstance(reserve, (int, float)) and 0 < reserve < budget:
            ax.axvline(budget - reserve, color="black", linestyle=":",
                       label=f"reserve for predict + verify {_duration(reserve)}")
        share = elapsed / budget
        title = f"time used: {_duration(elapsed)} of the {_duration(budget)} budget ({share:.0%})"
        if elapsed > budget:
            title += f", {_duration(elapsed - budget)} over"
    else:
        title = f"time used: {_duration(elapsed)} (no budget limit)"
    ax.set(yticks=[], xlabel="seconds", title=title, xlim=(0, span * 1.02), ylim=(-0.6, 0.6))
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize="small", frameon=False)
    return _save(fig, run, name, show)


# --------------------------------------------------------------------------- confusion matrix


def _class_indices(values: np.ndarray, labels: list[str], what: str) -> np.ndarray:
    """Class indices from indices (integers) or from the class names themselves."""
    if values.dtype.kind in "iu" or (values.dtype.kind == "f" and np.all(np.mod(values, 1) == 0)):
        idx = values.astype(np.int64)
        bad = np.unique(idx[(idx < 0) | (idx >= len(labels))])
        if bad.size:
            raise ValueError(f"{what} holds class indices {bad[:10].tolist()} outside 0..{len(labels) - 1} "
                             f"({len(labels)} labels given).")
        return idx
    lookup = {label: i for i, label in enumerate(labels)}
    text = values.astype(str)
    unknown = sorted(set(text.tolist()) - set(lookup))
    if unknown:
        raise ValueError(f"{what} holds {unknown[:10]}, which are not in labels {labels[:10]}: pass class "
                         "indices (0..n-1) or names from labels.")
    return np.array([lookup[t] for t in text], dtype=np.int64)


def confusion_matrix(y_true: Any, y_pred: Any, labels: Sequence[Any], run: Any, *, max_annotate: int = 20,
                     show: bool | None = None, name: str = "confusion_matrix") -> Path:
    """The confusion matrix, each true row normalised to 1 (colour), with the counts written in the
    cells when there are at most `max_annotate` classes. `y_true`/`y_pred` are class indices into
    `labels` (or the label names themselves)."""
    from sklearn.metrics import confusion_matrix as _confusion

    if isinstance(labels, (str, bytes)) or not hasattr(labels, "__iter__"):
        raise ValueError(f"labels={labels!r} must be the list of class names, e.g. labels.json 'classes'.")
    labels = [str(label) for label in labels]
    if not labels:
        raise ValueError("labels is empty: give the class names, e.g. labels.json 'classes'.")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels repeat names {sorted({x for x in labels if labels.count(x) > 1})[:10]}: "
                         "each class needs its own name.")
    t, p = _vector(y_true, "y_true"), _vector(y_pred, "y_pred")
    _same_length(t, p, "y_true and y_pred")
    t, p = _class_indices(t, labels, "y_true"), _class_indices(p, labels, "y_pred")
    n = len(labels)
    counts = _confusion(t, p, labels=list(range(n)))
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)

    size = min(max(4.5, 0.45 * n + 2.5), 18)
    fig = _figure(size + 1, size)
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    if n <= max_annotate:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize="small",
                            color="white" if share[i, j] > 0.5 else "black")
    if n <= 50:
        ax.set_xticks(range(n), labels, rotation=45 if n > 6 else 0, ha="right" if n > 6 else "center")
        ax.set_yticks(range(n), labels)
    accuracy = float(np.trace(counts) / counts.sum())
    ax.set(xlabel="predicted", ylabel="true",
           title=f"accuracy {accuracy:.4f} on {len(t)} samples (rows normalised)")
    return _save(fig, run, name, show)


# --------------------------------------------------------------------------- segmentation overlays


def _class_map(mask: Any, what: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3 and 1 in (m.shape[0], m.shape[-1]):
        m = m.reshape([s for s in m.shape if s != 1] or [1])
    if m.ndim != 2:
        raise ValueError(f"{what} must be a class map of shape (H, W); got shape {m.shape}. For class "
                         "probabilities (C, H, W) pass their argmax over C.")
    values = set(np.unique(m).tolist())
    if values <= set(range(len(SEGMENTATION_CLASSES))):
        return m.astype(np.uint8)
    if values <= set(_LABEL_ENCODING):
        return (m // 85).astype(np.uint8)
    bad = sorted(values - set(range(4)) - set(_LABEL_ENCODING))[:10]
    raise ValueError(f"{what} holds values {bad}: use class indices 0-3 ({', '.join(SEGMENTATION_CLASSES)}) "
                     "or the label-file encoding 0/85/170/255.")


def _composite(image: Any, shape: tuple[int, int], rgb: Sequence[int], what: str) -> np.ndarray:
    """An (H, W, 3) picture in [0, 1]: the `rgb` channels (or the first, in grey), each stretched
    between its 2nd and 98th percentile."""
    x = np.asarray(image, dtype=np.float64)
    if x.ndim == 2 and x.shape == shape:
        x = x[:, :, None]
    elif x.ndim == 3 and x.shape[:2] == shape:
        pass
    elif x.ndim == 3 and x.shape[1:] == shape:
        x = np.moveaxis(x, 0, -1)
    else:
        raise ValueError(f"{what} has shape {x.shape}, which does not match its mask {shape}: images must be "
                         "(H, W), (H, W, C) or (C, H, W) with the mask's H and W.")
    channels = x.shape[2]
    if channels >= 3:
        bad = [c for c in rgb if not 0 <= c < channels]
        if len(rgb) != 3 or bad:
            raise ValueError(f"rgb={tuple(rgb)!r} must be three channel indices below {channels} (the image's "
                             "channels); e.g. (2, 1, 0) for Landsat blue, green, red in channels 0, 1, 2.")
        x = x[:, :, list(rgb)]
    else:
        x = np.repeat(x[:, :, :1], 3, axis=2)
    out = np.zeros_like(x)
    for c in range(3):
        band = x[:, :, c]
        finite = band[np.isfinite(band)]
        if finite.size:
            lo, hi = np.percentile(finite, [2, 98])
            out[:, :, c] = np.clip((band - lo) / (hi - lo), 0, 1) if hi > lo else 0.5
    return np.nan_to_num(out, nan=0.0)


def overlays(images: Any, masks_true: Any, masks_pred: Any, run: Any, names: Sequence[str] | None = None,
             max_tiles: int = 4, *, rgb: Sequence[int] = (2, 1, 0), show: bool | None = None,
             name: str = "overlays") -> Path:
    """Segmentation tiles side by side: the image (channels `rgb` as red, green, blue, or the first
    channel in grey), the true and the predicted class map in fixed colours (background, glacier,
    debris, lake), for the first `max_tiles` tiles. Masks are class indices 0-3 or 0/85/170/255."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    if isinstance(max_tiles, bool) or not isinstance(max_tiles, int) or max_tiles < 1:
        raise ValueError(f"max_tiles={max_tiles!r} must be a whole number >= 1.")
    imgs, trues, preds = (list(a) if a is not None else [] for a in (images, masks_true, masks_pred))
    if not imgs:
        raise ValueError("images is empty: there is nothing to plot.")
    if not len(imgs) == len(trues) == len(preds):
        raise ValueError(f"images, masks_true and masks_pred must hold the same number of tiles; got "
                         f"{len(imgs)}, {len(trues)} and {len(preds)}.")
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(imgs):
            raise ValueError(f"names has {len(names)} entries for {len(imgs)} tiles: give one name per tile or None.")
    k = min(max_tiles, len(imgs))
    tiles = []
    for i in range(k):
        t = _class_map(trues[i], f"masks_true[{i}]")
        p = _class_map(preds[i], f"masks_pred[{i}]")
        if p.shape != t.shape:
            raise ValueError(f"masks_pred[{i}] has shape {p.shape} but masks_true[{i}] {t.shape}: they must match.")
        tiles.append((_composite(imgs[i], t.shape, rgb, f"images[{i}]"), t, p))

    cmap = ListedColormap(SEGMENTATION_COLOURS)
    fig = _figure(11, 3.4 * k + 0.6)
    axes = np.atleast_2d(fig.subplots(k, 3))
    for i, (picture, t, p) in enumerate(tiles):
        label = names[i] if names is not None else f"tile {i}"
        agree = float((t == p).mean())
        panels = ((picture, f"{label}: image"), (t, "true"), (p, f"predicted (pixel accuracy {agree:.3f})"))
        for ax, (data, title) in zip(axes[i], panels):
            if data.ndim == 3:
                ax.imshow(data, interpolation="nearest")
            else:
                ax.imshow(data, cmap=cmap, vmin=-0.5, vmax=len(SEGMENTATION_CLASSES) - 0.5, interpolation="nearest")
            ax.set_title(title, fontsize="small")
            ax.set_axis_off()
    fig.legend(handles=[Patch(color=c, label=n) for n, c in zip(SEGMENTATION_CLASSES, SEGMENTATION_COLOURS)],
               loc="outside lower center", ncol=len(SEGMENTATION_CLASSES), frameon=False)
    return _save(fig, run, name, show)


# --------------------------------------------------------------------------- ROC and partial AUC


def roc_pauc(y_true: Any, scores: Any, run: Any, min_tpr: float = 0.8, *, show: bool | None = None,
             name: str = "roc_pauc") -> Path:
    """The ROC curve with the region counted by the partial AUC (TPR >= `min_tpr`) shaded and its
    value, as the ISIC 2024 scorer computes it (`kagglekit_nb.metrics.partial_auc`), in the title."""
    from sklearn.metrics import roc_auc_score, roc_curve

    from .metrics import partial_auc

    t, s = _vector(y_true, "y_true"), _vector(scores, "scores")
    _same_length(t, s, "y_true and scores")
    pauc = partial_auc(t, s, min_tpr=min_tpr)  # checks labels, values and min_tpr
    t = t.astype(int)
    fpr, tpr, _ = roc_curve(t, s.astype(float))
    full = float(roc_auc_score(t, s.astype(float)))

    fig = _figure(6, 5.5)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ":", color="#9e9e9e", label="chance")
    ax.fill_between(fpr, min_tpr, tpr, where=tpr >= min_tpr, interpolate=True, color="#fc8d62", alpha=0.45,
                    label=f"pAUC region (TPR >= {min_tpr:.0%})")
    ax.axhline(min_tpr, color="#c62828", linestyle="--", linewidth=1)
    ax.plot(fpr, tpr, color="#1f4e9c", linewidth=2, label=f"ROC (AUC {full:.4f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate",
           title=f"pAUC above {min_tpr:.0%} TPR: {pauc:.4f} (max {1 - min_tpr:.2f})\n"
                 f"{int(t.sum())} positives, {int(len(t) - t.sum())} negatives")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, run, name, show)
