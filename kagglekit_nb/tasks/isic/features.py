"""ISIC feature tables: the tabular features plus image features (patient-normalised embeddings
reduced by a PCA fitted on train, and the fine-tuned out-of-fold image score)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ...run import Run
from ._time import declare_reserves
from .data import TRAIN_ONLY_COLUMNS, Competition, make_features
from .embeddings import Embeddings
from .finetune import ImageScores

if TYPE_CHECKING:
    from .pipeline import Config

__all__ = ["PCA_FIT_ROWS", "Features", "features", "patient_normalise"]

# The scaler and PCA of the image features are fitted on at most this many train rows (drawn with SEED):
# 32 components of a 512-d embedding are as well estimated from 50,000 rows as from 400,000, and the
# fit's float copies stay the same size however many rows there are (all 401,059 rows: ~4 GB).
PCA_FIT_ROWS = 50_000
_TRANSFORM_ROWS = 32_768  # rows projected at a time: the float copies of a transform stay this size


def patient_normalise(values: np.ndarray, patients: Sequence[Any]) -> np.ndarray:
    """Per-patient z-scores of every column (population std, float32); rows with NaN stay NaN, and a
    patient whose rows do not vary gets 0. One column at a time: memory stays at the input's size."""
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2 or len(values) != len(patients):
        raise ValueError(f"values must be (rows, columns) with one row per patient entry; got {values.shape} "
                         f"for {len(patients)} patients.")
    out = np.full_like(values, np.nan)
    valid = ~np.isnan(values).any(1)
    if not valid.any():
        return out
    codes, _ = pd.factorize(np.asarray(patients, dtype=object)[valid])
    count = np.bincount(codes).astype(np.float64)
    for j in range(values.shape[1]):
        col = values[valid, j].astype(np.float64)
        mean = np.bincount(codes, weights=col) / count
        centred = col - mean[codes]
        std = np.sqrt(np.bincount(codes, weights=centred * centred) / count)[codes]
        out[valid, j] = np.where(std > 1e-9, centred / np.where(std > 1e-9, std, 1.0), 0.0)
    return out


def _project(z: np.ndarray, scaler: Any, pca: Any) -> np.ndarray:
    """The PCA components (float32) of each row of `z` with no NaN, NaN elsewhere; a block of rows at
    a time."""
    out = np.full((len(z), pca.n_components_), np.nan, np.float32)
    for lo in range(0, len(z), _TRANSFORM_ROWS):
        block = z[lo:lo + _TRANSFORM_ROWS]
        ok = ~np.isnan(block).any(1)
        if ok.any():
            out[lo:lo + _TRANSFORM_ROWS][ok] = pca.transform(scaler.transform(block[ok]))
    return out


@dataclass
class Features:
    """The feature tables of both splits and which columns each model uses."""

    train: pd.DataFrame
    test: pd.DataFrame
    y: np.ndarray
    columns: dict[str, list[str]]          # model name -> its feature columns
    test_complete: dict[str, bool]         # model name -> every test row has its image features


def features(comp: Competition, emb: Embeddings | None, ft: ImageScores | None, cfg: Config,
             run: Run) -> Features:
    """Tabular features (`isic.make_features`) plus image features: the PCA of the patient-normalised
    embeddings (fitted on train rows, at most PCA_FIT_ROWS of them) and, with fine-tuning, the
    out-of-fold image score and its per-patient z-score. Never a train-only column."""
    declare_reserves(run, len(comp.test), cfg)
    with run.budget.timed("features"):
        X_train, X_test, tab = make_features(comp.train, comp.test)
        image: list[str] = []
        if emb is not None and emb.rows("train") > 1:
            from sklearn.decomposition import PCA
            from sklearn.preprocessing import StandardScaler

            z_train = patient_normalise(emb.train, comp.train["patient_id"])
            z_test = patient_normalise(emb.test, comp.test["patient_id"])
            fit_rows = np.flatnonzero(~np.isnan(z_train).any(1))
            n_fit = len(fit_rows)
            if n_fit > PCA_FIT_ROWS:
                fit_rows = np.sort(np.random.default_rng(cfg.SEED).choice(fit_rows, PCA_FIT_ROWS, replace=False))
            n = min(cfg.IMAGE_PCA, len(fit_rows) - 1, z_train.shape[1])
            scaler = StandardScaler().fit(z_train[fit_rows])
            pca = PCA(n, random_state=cfg.SEED).fit(scaler.transform(z_train[fit_rows]))
            names = [f"img_pc{i}" for i in range(n)]
            for X, z in ((X_train, z_train), (X_test, z_test)):
                X[names] = _project(z, scaler, pca)
            image += names
            run.log(f"image features: {n} PCA components of the patient-normalised {emb.train.shape[1]}-d "
                    f"embeddings ({pca.explained_variance_ratio_.sum():.0%} of their variance"
                    f"{f', fitted on {len(fit_rows)} rows' if len(fit_rows) < n_fit else ''}); "
                    f"{n_fit}/{len(z_train)} train rows have them")
        if ft is not None and np.isfinite(ft.train).any():
            for X, scores, frame in ((X_train, ft.train, comp.train), (X_test, ft.test, comp.test)):
                X["img_finetune"] = scores
                X["img_finetune_patient_z"] = patient_normalise(scores[:, None], frame["patient_id"])[:, 0]
            image += ["img_finetune", "img_finetune_patient_z"]
    columns = {"tabular": tab}
    if image:
        columns.update(image=image, combined=tab + image)
    leaked = [c for cols in columns.values() for c in cols if c in TRAIN_ONLY_COLUMNS]
    if leaked:
        raise ValueError(f"features {leaked} are train-only columns; they are unknown for test lesions.")
    # A test row without image features because its image is unreadable (ON_BAD_IMAGE="skip") is
    # predicted as LightGBM routes missing values; rows not extracted (budget) keep image models out.
    lacking = set(comp.test.loc[~X_test[image].notna().all(axis=1).to_numpy(), "isic_id"]) if image else set()
    image_complete = bool(image) and lacking <= set(emb.skipped if emb is not None else ())
    complete = {name: name == "tabular" or image_complete for name in columns}
    run.log(f"features: {len(tab)} tabular, {len(image)} image" +
            ("" if all(complete.values()) else "; some test rows lack image features (image models not submitted)"))
    return Features(train=X_train, test=X_test, y=comp.y, columns=columns, test_complete=complete)
