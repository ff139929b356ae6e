"""Frozen-backbone embeddings as classical features: when pretrained weights are at hand, the pooled
features of a pretrained timm backbone for every image, then the classical stage's model on them.

A pretrained backbone that never trains is often a far stronger cheap model than downsized pixels,
and it costs one forward pass per image. The stage runs only when the weights are real (attached to
the session, a WEIGHTS file, or the hub when the session has internet): random weights would embed
nothing worth a model, so then the stage says so and is skipped.

    result = stage(data, folds, cfg, run)   # a classical.ClassicalResult, or None (skipped)
    result.oof, result.test, result.score   # out-of-fold and test probabilities, OOF score

It reuses the ISIC notebook's embedding machinery (`tasks.isic.embeddings`): the chunked cache in
`<run>/embeddings/<key>/<split>/chunks<N>/`, one atomic file per chunk, so a session that runs out of
its share of the time (`SHARE`) leaves finished chunks for the next session, which continues; the
stage's model is fit once every image has an embedding. The fitted result is saved as
`frozen.npz`, reused while the rows, classes, folds and embeddings are the same.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import Dataset

from ..metrics import get_metric
from ..run import Run
from . import classical
from .classical import ClassicalResult

if TYPE_CHECKING:
    import pandas as pd

    from ..weights import Weights
    from .competition import Competition

__all__ = ["CANDIDATE", "FILE", "SHARE", "backbone_weights", "saved", "stage"]

CANDIDATE = "embeddings"   # the candidate's name in run.json and the chooser
FILE = "frozen.npz"        # the stage's out-of-fold and test probabilities
SHARE = 0.25               # at most this share of the training time left goes to extracting embeddings
# (with several training processes the stage runs after them, from a reserve of this share)
CHUNK = 1024               # images per cache file: the most a stopped extraction loses
CPU_MAX_SIZE = 112         # on a CPU the images are embedded at most this large (a quarter of 224's pixels)
SHARE_NAME = "frozen embeddings"  # the budget's name for the share


class _Indexed(Dataset):
    """(image tensor, row) per row, as the embedding extraction reads them; None for a row whose
    image is known to be unreadable (its embedding stays NaN)."""

    def __init__(self, paths: list[str], transform: Any, known_bad: Any):
        from .images import ImageDataset

        self.images = ImageDataset(paths, None, transform, in_chans=3, on_error="skip", known_bad=known_bad)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Any:
        if self.images.paths[i] in self.images.known_bad:
            return None
        return self.images[i], i


def backbone_weights(cfg: Any) -> Weights | None:
    """The first model with real weights: MODEL itself, or (MODEL "auto") the LADDER's models in
    order; None when WEIGHTS is None or no model has weights to start from."""
    from ..weights import resolve_weights, timm_repo
    from .classification import AUTO, LADDER

    if cfg.WEIGHTS is None:
        return None
    names = [cfg.MODEL] if cfg.MODEL != AUTO else list(dict.fromkeys(m for m, _ in LADDER))
    for name in names:
        found = resolve_weights(name, cfg.WEIGHTS, repo=timm_repo(name))
        if found.path is not None:
            return found
    return None


def _key(weights: Weights, size: int) -> str:
    return f"{weights.model}-{size}px-w{weights.sha256[:16]}"


def _embed(data: Competition, cfg: Any, run: Run, weights: Weights) -> tuple[np.ndarray, np.ndarray, dict, str | None]:
    """Train and test embeddings (NaN rows: not extracted, or an unreadable image), what the
    extraction did (cache key, image size, images from the cache and computed), and why it
    stopped early (None: every image has one)."""
    from timm.data import resolve_model_data_config

    from ..weights import timm_kwargs
    from ._config import timm_model
    from .images import transforms
    from .isic import embeddings as _emb

    model = timm_model(weights.model, num_classes=0, **timm_kwargs(weights)).to(run.device).eval()
    config = resolve_model_data_config(model)
    size = int(config["input_size"][-1])
    if run.device.type != "cuda":
        size = min(size, CPU_MAX_SIZE)
    key = _key(weights, size)
    transform = transforms(size, list(config["mean"]), list(config["std"]), train=False)
    root = run.dir / _emb.EMBED_DIR / key
    dim = int(model.num_features)
    run.budget.allot(SHARE_NAME, SHARE)
    values, reason = {}, None
    info = {"key": key, "img_size": size, "cached": 0, "computed": 0}
    for split, frame in (("train", data.train), ("test", data.test)):
        ids = frame["id"].to_numpy(dtype=str)  # a text array: chunk files hold no pickled objects
        directory = root / split / f"chunks{CHUNK}"
        directory.mkdir(parents=True, exist_ok=True)
        ext = _emb._Extraction(split, ids, directory, CHUNK, dim)
        todo = ext.reuse(run.log)
        if todo and reason is None:
            images = _Indexed(frame["path"].tolist(), transform, data.unreadable)
            reason = _emb._run_extraction(ext, todo, images, model, cfg, run, share=SHARE_NAME)
        values[split] = ext.values
        info["cached"] += ext.cached
        info["computed"] += ext.computed
    return values["train"], values["test"], info, reason


def _fit_key(data: Competition, folds: pd.Series, key: str) -> str:
    text = "|".join([*data.train["id"].astype(str), "#", *data.test["id"].astype(str), "#", *data.classes, "#",
                     *map(str, folds.to_numpy()), "#", key])
    return hashlib.sha1(text.encode()).hexdigest()


def stage(data: Competition, folds: pd.Series, cfg: Any, run: Run) -> ClassicalResult | None:
    """The classical model on frozen pretrained embeddings, fit on the saved folds (see the module
    docstring); None when no pretrained weights are at hand, the budget has no time for it, or the
    extraction is not finished yet (the next session continues it)."""
    weights = backbone_weights(cfg)
    if weights is None:
        run.record["frozen"] = {"skipped": "no pretrained weights attached or downloadable"}
        run.log("frozen embeddings: skipped, no pretrained weights (attach them to add this candidate)")
        return None
    metric = get_metric(data.metric)
    with run.budget.timed("frozen embeddings"):
        try:
            train, test, info, reason = _embed(data, cfg, run, weights)
        except (ValueError, RuntimeError) as e:  # e.g. a WEIGHTS file of another model: the stage is optional
            why = " ".join(str(e).split())[:300]
            run.record["frozen"] = {"model": weights.model, "weights": weights.record(), "skipped": why}
            run.log(f"WARNING: frozen embeddings skipped, {weights.model} could not embed the images: {why}")
            return None
        record: dict[str, Any] = {"model": weights.model, "weights": weights.record(), **info}
        if reason is not None:
            done = int(np.isfinite(train).all(1).sum() + np.isfinite(test).all(1).sum())
            record["skipped"] = reason
            run.record["frozen"] = record
            run.log(f"frozen embeddings: {done}/{len(train) + len(test)} images embedded, stopped ({reason}); "
                    "the next session with this OUTPUT_DIR continues")
            return None
        fit_key = _fit_key(data, folds, info["key"])
        path = run.dir / FILE
        result = ClassicalResult.load(path, key=fit_key)
        if result is None:
            bad = np.isnan(train).any(1)
            X, X_test = np.nan_to_num(train), np.nan_to_num(test)
            fold_s = classical.estimate_s(X, data.y, cfg.FOLDS, cfg.SEED)
            result = classical.fit_predict(X, data.y, folds.to_numpy(), X_test, n_classes=data.n_classes,
                                           metric=metric, seed=cfg.SEED, skip=np.flatnonzero(bad).tolist(),
                                           skip_test=np.flatnonzero(np.isnan(test).any(1)).tolist(),
                                           budget=run.budget, fold_s=fold_s)
            if result.test is None or len(result.folds_done) < len(np.unique(folds[folds >= 0])):
                record.update(result.summary(), skipped=result.stop_reason)
                run.record["frozen"] = record
                run.log(f"frozen embeddings: the model did not fit every fold ({result.stop_reason})")
                return None
            result.save(path, fit_key)
    record.update(result.summary())
    run.record["frozen"] = record
    run.log(f"frozen embeddings ({weights.model}, {weights.source} weights) + {result.model}: OOF {metric.name} "
            f"{'n/a' if result.score is None else f'{result.score:.4f}'}")
    return result


def saved(data: Competition, run: Run) -> ClassicalResult | None:
    """The stage's saved result when it matches these rows (a session that only predicts)."""
    return ClassicalResult.load(run.dir / FILE, shape=(len(data.train), data.n_classes, len(data.test)))
