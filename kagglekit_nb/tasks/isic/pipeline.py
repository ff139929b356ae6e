"""ISIC 2024 (notebooks/isic_embed_lgbm.ipynb): image embeddings + engineered tabular features -> LightGBM.

    cfg     = Config.from_namespace(globals())         # the notebook's parameters, type-checked
    run     = start(cfg)                                # seed, budget, output folder, environment
    data    = load(cfg, run)                            # a Competition: metadata, HDF5 images, sample
    folds   = make_folds(data, cfg, run)                # StratifiedGroupKFold by patient_id, saved once
    models  = train(data, folds, cfg, run)              # embeddings -> (fine-tune) -> features -> LightGBM
    preds   = predict(data, models, cfg, run)           # test: mean over every fold and seed of SUBMIT
    path    = write_submission(data, preds, cfg, run)   # isic_id,target in the sample's order
    report  = finish(data, path, cfg, run)              # verify, verification.json, run.json
    figures = plot_results(run, data, models, folds)    # time per phase, ROC of each model's OOF

`train` runs four sub-steps, each usable on its own: `embeddings` (timm features, cached, resumable
by chunk), `finetune` (optional: out-of-fold scores of fine-tuned fold models), `features` (tabular +
patient-normalised image features) and `train_lgbm` (tabular-only, image-only, combined models).

Image features: the embeddings of each split are z-scored per patient (how a lesion differs from the
same patient's other lesions, the "ugly duckling" sign), then reduced by a PCA fitted on train. With
fine-tuning, each training row's image score comes from the fold model that did not train on it and
test scores are averaged over the fold models.

With several processes (DEVICES: Kaggle's two T4s by default, or "cpu:2") the embedding extraction
is sharded by chunk among torchrun workers (`train_worker`); everything after it runs in the notebook's
own process, on the embeddings read back from the cache.

Everything a later session can reuse is kept in the run folder: `folds.csv`, the embedding chunks,
the fine-tuned fold checkpoints and one LightGBM model per (model, seed, fold).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ... import distributed
from ... import folds as _folds
from ...run import Run, join_run
from ...weights import AUTO
from .._config import Demo, RunConfig, early_baseline, find_data, record_written, start, verify_csv
from .data import SAMPLE_FILE, TEST_FILE, TEST_IMAGES, TRAIN_FILE, TRAIN_IMAGES, Competition, read_metadata
from .embeddings import Embeddings, embeddings
from .features import Features, features
from .finetune import ImageScores, finetune
from .lgbm import MODELS, SINGLE_THREAD_ROWS, LGBMResult, ModelResult, train_lgbm

__all__ = [
    "ON_BAD_IMAGE_CHOICES",
    "SUBMIT_CHOICES",
    "Config",
    "Trained",
    "finish",
    "load",
    "make_folds",
    "plot_results",
    "predict",
    "start",
    "train",
    "write_submission",
]

REQUIRED_FILES = (TRAIN_FILE, TEST_FILE, SAMPLE_FILE, TRAIN_IMAGES, TEST_IMAGES)
SUBMIT_CHOICES = (*MODELS, "best")
ON_BAD_IMAGE_CHOICES = ("raise", "skip")
DEMO = Demo("isic", marks=(SAMPLE_FILE,), note="the bundled synthetic ISIC demo")


@dataclass
class Config(RunConfig):
    """The notebook's parameters (same names, same defaults as its `parameters` cell)."""

    RUN_NAME: str = "isic"
    MODEL: str = "resnet18"            # timm backbone of the image embeddings
    WEIGHTS: str | None = "auto"       # "auto": attached weights, else the hub when online, else random (a warning); None = random; or a file
    IMG_SIZE: int = 64                 # images are resized to IMG_SIZE x IMG_SIZE
    BATCH_SIZE: int = 128
    EMBED_CHUNK: int = 1024            # images per cache file: the most a killed extraction loses
    EMBED_SHARE: float = 0.5           # at most this share of the time left goes to image embeddings
    IMAGE_PCA: int = 32                # PCA components of the patient-normalised embeddings; 0 = no embeddings
    ON_BAD_IMAGE: str = "raise"        # a missing or corrupt image: "raise", or "skip" (no image features)
    TEST_ROWS: int | None = None       # the hidden test set's size when the rerun scores more rows (ISIC 2024: ~500,000)
    FOLDS: int = 5
    LGBM_SEEDS: int = 3                # LightGBM seeds per fold; the budget may train fewer
    NEG_PER_POS: int | None = 20       # negatives kept per positive per training fold; None = all + scale_pos_weight
    LEARNING_RATE: float = 0.03
    NUM_LEAVES: int = 15
    MAX_ROUNDS: int = 1000             # boosting rounds at most; early stopping on the validation fold
    EARLY_STOPPING: int = 100          # rounds without a better validation AUC before stopping
    SUBMIT: str = "combined"           # whose test predictions are submitted: tabular, image, combined, best
    FINETUNE: bool = False             # fine-tune the backbone per fold (slow on a CPU)
    FINETUNE_EPOCHS: int = 2
    FINETUNE_LR: float = 1e-3
    FINETUNE_NEG_PER_POS: int = 4      # balanced sampling: negatives per positive in each fine-tuning epoch
    NUM_WORKERS: int | None = None     # DataLoader workers; None = automatic
    DEVICES: int | str | None = None   # embedding processes: None = every visible GPU (one GPU or none: one process); 1; 2; "cpu:2"
    DEVICE: str | None = None          # None = CUDA when available

    def check(self) -> None:
        self.at_least(1, "BATCH_SIZE", "EMBED_CHUNK", "LGBM_SEEDS", "MAX_ROUNDS", "EARLY_STOPPING",
                      "NEG_PER_POS", "FINETUNE_EPOCHS", "FINETUNE_NEG_PER_POS", "TEST_ROWS")
        self.at_least(0, "IMAGE_PCA", "NUM_WORKERS")
        self.at_least(2, "FOLDS", "NUM_LEAVES")
        if not 8 <= self.IMG_SIZE <= 4096:
            raise ValueError(f"IMG_SIZE={self.IMG_SIZE!r} must be a number of pixels between 8 and 4096.")
        if not 0.0 < self.EMBED_SHARE <= 1.0:
            raise ValueError(f"EMBED_SHARE={self.EMBED_SHARE!r} must be in (0, 1], e.g. 0.5 for half the time left.")
        for name in ("LEARNING_RATE", "FINETUNE_LR"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be positive.")
        for name, choices in (("SUBMIT", SUBMIT_CHOICES), ("ON_BAD_IMAGE", ON_BAD_IMAGE_CHOICES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}={getattr(self, name)!r} is not valid; choose one of {', '.join(choices)}.")
        if self.FINETUNE:  # the fine-tuning's optimizer steps share BATCH_SIZE between the processes
            distributed.check_config(self.DEVICES, self.DEVICE, self.BATCH_SIZE)
        else:
            distributed.check_devices(self.DEVICES, self.DEVICE)
        if self.WEIGHTS not in (None, AUTO) and not Path(self.WEIGHTS).expanduser().exists():
            raise FileNotFoundError(f"WEIGHTS={self.WEIGHTS!r} is not a file: attach the weights as a dataset and "
                                    f"point WEIGHTS at the .pth/.safetensors file, or use {AUTO!r} or None (random "
                                    "weights).")


@dataclass
class Trained:
    """What `train` made: the image embeddings and fine-tuned image scores (None when off), the
    feature tables and the LightGBM models."""

    embeddings: Embeddings | None
    image_scores: ImageScores | None
    features: Features
    lgbm: LGBMResult

    def table(self) -> pd.DataFrame:
        """Each LightGBM model's out-of-fold pAUC, fits, seeds done and rounds (see `LGBMResult.table`)."""
        return self.lgbm.table()


# ----------------------------------------------------------------------------- steps


def load(cfg: Config, run: Run) -> Competition:
    """Read both metadata files and the sample submission; test rows follow the sample's order."""
    data_dir = find_data(cfg, run, required=REQUIRED_FILES, what=f"competition data ({', '.join(REQUIRED_FILES)})",
                         demo=DEMO)
    sample = _read_sample(data_dir)
    try:
        train, test = read_metadata(data_dir)
    except (OSError, ValueError):
        early_baseline(run, sample, train_labels=None, kind="binary_proba")  # the sample's own values
        raise
    early_baseline(run, sample, train_labels=pd.to_numeric(train["target"], errors="coerce").dropna().tolist(),
                   kind="binary_proba")
    comp = _competition(data_dir, sample, train, test)
    y = comp.train["target"]
    run.log(f"{len(comp.train)} train lesions ({int(y.sum())} malignant, {y.mean():.2%}) of "
            f"{comp.train['patient_id'].nunique()} patients; {len(comp.test)} test lesions of "
            f"{comp.test['patient_id'].nunique()} patients")
    return comp


def _read_sample(data_dir: Path) -> pd.DataFrame:
    """`sample_submission.csv` of `data_dir`, checked to hold the two ISIC 2024 columns."""
    sample_path = data_dir / SAMPLE_FILE
    if not sample_path.is_file():
        raise FileNotFoundError(f"{sample_path} does not exist; the submission's format comes from it.")
    sample = pd.read_csv(sample_path, dtype=str, keep_default_na=False)
    if list(sample.columns[:1]) != ["isic_id"] or len(sample.columns) != 2:
        raise ValueError(f"{sample_path} has the columns {list(sample.columns)}; an ISIC 2024 sample submission "
                         "has two: isic_id,target.")
    return sample


def _competition(data_dir: Path, sample: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame) -> Competition:
    """The Competition of the metadata read from `data_dir`, checked against its sample; test rows in the
    sample's order."""
    missing = sorted(set(sample["isic_id"]) - set(test["isic_id"]))
    extra = sorted(set(test["isic_id"]) - set(sample["isic_id"]))
    if missing or extra:
        raise ValueError(
            f"{SAMPLE_FILE} and {TEST_FILE} list different lesions: {len(missing)} isic_ids only in the sample "
            f"(e.g. {missing[:3]}), {len(extra)} only in the test metadata (e.g. {extra[:3]}). Both must come "
            "from the same competition version.")
    test = test.set_index("isic_id", drop=False).loc[sample["isic_id"]].reset_index(drop=True)
    images = {"train": data_dir / TRAIN_IMAGES, "test": data_dir / TEST_IMAGES}
    for split, path in images.items():
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; the {split} images are read from it.")
    y = train["target"]
    if not y.isin([0, 1]).all():
        raise ValueError(f"{TRAIN_FILE}: target must be 0 or 1; found {sorted(set(y) - {0, 1})[:5]}.")
    return Competition(data_dir=data_dir, train=train, test=test, sample=sample, sample_path=data_dir / SAMPLE_FILE,
                       images=images)


def make_folds(data: Competition, cfg: Config, run: Run) -> pd.Series:
    """StratifiedGroupKFold by patient_id (no patient in two folds), made once and saved (`folds.csv`)."""
    folds = _folds.make_folds(data.train["isic_id"], data.train["target"], n_splits=cfg.FOLDS, seed=cfg.SEED,
                              path=run.dir / _folds.FOLDS_FILE, groups=data.train["patient_id"])
    per_patient = pd.Series(folds.to_numpy()).groupby(data.train["patient_id"].to_numpy()).nunique()
    shared = per_patient.index[per_patient > 1]
    if len(shared):
        raise ValueError(f"{run.dir / _folds.FOLDS_FILE} puts patient {shared[0]!r} in several folds: it was not "
                         "made by patient. Delete it (or use a new OUTPUT_DIR) to split again.")
    per_fold = data.train.groupby(folds.to_numpy())["target"].agg(["size", "sum"])
    run.log("folds (lesions / malignant): " + ", ".join(f"{k}: {int(r['size'])}/{int(r['sum'])}"
                                                        for k, r in per_fold.iterrows()))
    return folds


def train(data: Competition, folds: pd.Series, cfg: Config, run: Run) -> Trained:
    """Image embeddings (`embeddings`), optional fine-tuned image scores (`finetune`), the feature
    tables (`features`), then LightGBM for the tabular, image and combined models (`train_lgbm`),
    each step inside the budget and resumable from the run folder. With several processes (DEVICES)
    the embeddings are extracted in torchrun workers, sharded by chunk (`train_worker`); the rest
    runs here."""
    emb = embeddings(data, cfg, run)
    scores = finetune(data, folds, cfg, run)
    feats = features(data, emb, scores, cfg, run)
    return Trained(embeddings=emb, image_scores=scores, features=feats, lgbm=train_lgbm(feats, folds, cfg, run))


def train_worker(spec: dict[str, Any], device: Any) -> dict[str, Any]:
    """One process of a sharded embedding extraction or fine-tuning (`python -m kagglekit_nb.worker`,
    started by `embeddings` or `finetune`): the config, run and data re-created from the spec the
    notebook process wrote, then this rank's chunks (`embeddings.extract_share`) or its share of each
    fine-tuning step (`finetune.train_worker`). Returns what rank 0 writes to result.json."""
    from .embeddings import extract_share
    from .finetune import train_worker as finetune_worker

    cfg = Config(**spec["config"])
    run = join_run(spec["run"], device=device)
    data_dir = Path(cfg.DATA_DIR)
    data = _competition(data_dir, _read_sample(data_dir), *read_metadata(data_dir))
    if spec.get("stage") == "finetune":
        folds = _folds.make_folds(data.train["isic_id"], data.train["target"], n_splits=cfg.FOLDS, seed=cfg.SEED,
                                  path=run.dir / _folds.FOLDS_FILE, groups=data.train["patient_id"])  # saved: read
        return finetune_worker(data, folds, cfg, run, spec)
    return extract_share(data, cfg, run)


# ----------------------------------------------------------------------------- predict & submit


def _choose(models: LGBMResult, feats: Features, cfg: Config, run: Run) -> ModelResult | None:
    """The SUBMIT model (the best by OOF pAUC for "best"), else a usable one, said in the log."""
    usable = {name: m for name, m in models.models.items() if m.fits and feats.test_complete.get(name, False)}
    if not usable:
        return None
    if cfg.SUBMIT == "best":
        scored = {n: m for n, m in usable.items() if m.score is not None}
        return max(scored.values(), key=lambda m: m.score) if scored else next(iter(usable.values()))
    if cfg.SUBMIT in usable:
        return usable[cfg.SUBMIT]
    fallback = usable.get("tabular") or next(iter(usable.values()))
    why = "has no fitted model" if cfg.SUBMIT in models.models and not models.models[cfg.SUBMIT].fits else \
        "is not available (no image features for every test row)"
    run.log(f"SUBMIT={cfg.SUBMIT!r} {why}: submitting the {fallback.name} model instead")
    return fallback


def predict(data: Competition, models: Trained, cfg: Config, run: Run) -> np.ndarray | None:
    """Test probabilities of the SUBMIT model: the mean over every (seed, fold) fit that exists.
    None when no model was fitted (the emergency baseline is written then)."""
    import lightgbm as lgb

    from ...hardware import cpu_count

    feats = models.features
    chosen = _choose(models.lgbm, feats, cfg, run)
    if chosen is None:
        run.log("no LightGBM model was fitted: the emergency baseline will be written instead")
        return None
    from ...metrics import partial_auc

    prior = partial_auc(data.y, np.zeros(len(data.y))) if len(set(data.y.tolist())) == 2 else None
    if chosen.score is not None and prior is not None and chosen.score <= prior:
        run.log(f"the {chosen.name} model's OOF pAUC {chosen.score:.4f} does not beat the constant baseline's "
                f"{prior:.4f}: the emergency baseline stays")
        run.record["candidates"] = {"baseline": prior, chosen.name: chosen.score}
        run.record["submitted"] = "baseline"
        return None
    X = feats.test[feats.columns[chosen.name]]
    with run.budget.timed("predict"):
        threads = 1 if len(X) < SINGLE_THREAD_ROWS else cpu_count()
        total = np.zeros(len(X))
        for _, _, path in chosen.fits:
            total += lgb.Booster(model_file=str(path)).predict(X, num_threads=threads)
        probs = total / len(chosen.fits)
    run.record["submitted_model"] = chosen.name
    run.record["cv_score"] = chosen.score
    _save_for_blends(data, chosen, probs, run)
    run.record["predicted_with"] = [f"seed{s}_fold{k}" for s, k, _ in chosen.fits]
    score = "n/a" if chosen.score is None else f"{chosen.score:.4f}"
    run.log(f"predicted {len(X)} test lesions with the {chosen.name} model: mean of {len(chosen.fits)} fits "
            f"(OOF pAUC {score})")
    return probs


def _save_for_blends(data: Competition, chosen: ModelResult, probs: np.ndarray, run: Run) -> None:
    """What `kagglekit blend` reads (`ensemble`): the submitted model's out-of-fold and test probabilities
    as two classes, the submission format (labels.json) and the metric (pauc80), so runs of other seeds,
    backbones or feature sets blend by out-of-fold pAUC."""
    from ..._atomic import write_json
    from ...ensemble import LABELS_FILE, save_predictions

    oof = np.full(len(data.y), np.nan) if chosen.oof is None else np.asarray(chosen.oof, dtype=float)
    save_predictions(run.dir, train_ids=data.train["isic_id"], targets=data.y, oof=np.c_[1 - oof, oof],
                     test_ids=data.sample["isic_id"], test=np.c_[1 - probs, probs], candidate=chosen.name,
                     sample=data.sample_path)
    write_json(run.dir / LABELS_FILE, {"classes": ["0", "1"], "kind": "binary_proba", "id_col": "isic_id",
                                       "target_cols": ["target"], "positive": "1", "topk": None})
    run.record["metric"] = "pauc80"


def write_submission(data: Competition, preds: np.ndarray | None, cfg: Config, run: Run) -> Path:
    """Write `submission.csv` (isic_id,target in the sample's order); the training positive rate
    everywhere when `preds` is None. It is verified beside the file first and replaces the one there
    (the emergency baseline `load` wrote) only when valid."""
    from ...submission import baseline, write_verified

    path = run.dir / "submission.csv"
    if preds is None:
        sub = baseline(data.sample, train_labels=data.y.tolist(), kind="binary_proba")
        what = "emergency baseline (training positive rate)"
    else:
        if len(preds) != len(data.sample):
            raise ValueError(f"{len(preds)} predictions for {len(data.sample)} rows of {SAMPLE_FILE}.")
        sub = pd.DataFrame({"isic_id": data.sample["isic_id"], "target": np.clip(preds, 0.0, 1.0)})
        what = "model"
    report = write_verified(sub, path, data.sample_path, kind="binary_proba")
    record_written(run, report, what, path)
    return path


def finish(data: Competition, path: Path, cfg: Config, run: Run) -> Any:
    """Verify the submission against the sample (isic_ids, probabilities in [0, 1]), write
    verification.json and run.json; an invalid file is replaced by the emergency baseline (the
    training positive rate) and the cell fails with the reasons."""
    return verify_csv(run, path, data.sample_path, train_labels=data.y.tolist(), kind="binary_proba")


# ----------------------------------------------------------------------------- plots


def plot_results(run: Run, data: Competition, models: Trained, folds: pd.Series) -> dict[str, Path]:
    """The run's plots, saved in `<run>/plots` and shown in the notebook: time per phase against the
    budget, and the ROC curve of each model's out-of-fold predictions (ranked within their fold, as
    `oof_pauc` scores them) with the region above 80% TPR shaded. A model without predictions yet is
    skipped with a log line."""
    from ... import plots

    out: dict[str, Path] = {}
    if run.budget.phases:
        out["time_bar"] = plots.time_bar(run)
    fold_of = folds.to_numpy()
    for name, m in models.lgbm.models.items():
        covered = np.isfinite(m.oof) if m.oof is not None else np.zeros(len(data.y), bool)
        if not covered.any() or len(set(data.y[covered].tolist())) < 2:
            run.log(f"no ROC curve for the {name} model: it has no out-of-fold predictions yet")
            continue
        pct = pd.Series(np.where(covered, m.oof, np.nan)).groupby(fold_of).rank(pct=True).to_numpy()
        out[f"roc_{name}"] = plots.roc_pauc(data.y[covered], pct[covered], run, name=f"roc_pauc_{name}")
    return out
