"""ISIC 2024 pipeline: image embeddings + engineered tabular features -> LightGBM, the steps the notebook calls.

    cfg    = Config.from_namespace(globals())     # the notebook's parameters, type-checked
    run    = start(cfg)                            # seed, budget, output folder, environment
    comp   = load_competition(cfg, run)            # metadata, HDF5 image files, sample submission
    folds  = make_folds(comp, cfg, run)            # StratifiedGroupKFold by patient_id, saved once
    emb    = embeddings(comp, cfg, run)            # timm features, cached on disk, resumable by chunk
    ft     = finetune(comp, folds, cfg, run)       # optional: out-of-fold scores of fine-tuned fold models
    feats  = features(comp, emb, ft, cfg, run)     # tabular + patient-normalised image features
    models = train_lgbm(feats, folds, cfg, run)    # tabular-only, image-only, combined: OOF pAUC of each
    probs  = predict(feats, models, cfg, run)      # test: mean over every fold and seed
    path   = write_submission(comp, probs, run)    # isic_id,target in the sample's order
    report = finish(comp, path, run)               # verify, verification.json, run.json

Image features: the embeddings of each split are z-scored per patient (how a lesion differs from the
same patient's other lesions, the "ugly duckling" sign), then reduced by a PCA fitted on train. With
fine-tuning, each training row's image score comes from the fold model that did not train on it and
test scores are averaged over the fold models.

Everything a later session can reuse is kept in the run folder: `folds.csv`, the embedding chunks
(`embeddings/<model>-<size>px-<weights>/<split>/chunks<EMBED_CHUNK>/chunk_NNNNN.npz`, one atomic
file per chunk, so a killed extraction continues from the last finished chunk), the fine-tuned fold checkpoints and one
LightGBM model per (model, seed, fold) under `lgbm/<model>-<digest of its inputs>/`.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import time
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from .. import folds as _folds
from .._atomic import write_atomic, write_json
from ..metrics import get_metric, partial_auc
from ..run import Run
from ._config import NotebookConfig, find_data_dir
from ._config import start as _start
from .isic import (
    SAMPLE_FILE,
    TEST_FILE,
    TEST_IMAGES,
    TRAIN_FILE,
    TRAIN_IMAGES,
    TRAIN_ONLY_COLUMNS,
    HDF5Images,
    ResizeToTensor,
    collate_skip_none,
    make_features,
    read_metadata,
)

__all__ = [
    "MODELS",
    "ON_BAD_IMAGE_CHOICES",
    "SUBMIT_CHOICES",
    "Competition",
    "Config",
    "Embeddings",
    "Features",
    "ImageScores",
    "LGBMResult",
    "ModelResult",
    "embedding_key",
    "embeddings",
    "features",
    "finetune",
    "finish",
    "load_competition",
    "make_folds",
    "oof_pauc",
    "patient_normalise",
    "predict",
    "start",
    "train_lgbm",
    "write_submission",
]

REQUIRED_FILES = (TRAIN_FILE, TEST_FILE, SAMPLE_FILE, TRAIN_IMAGES, TEST_IMAGES)
MODELS = ("tabular", "image", "combined")          # the three LightGBM models, in training order
SUBMIT_CHOICES = (*MODELS, "best")
ON_BAD_IMAGE_CHOICES = ("raise", "skip")
EMBED_DIR = "embeddings"
LGBM_DIR = "lgbm"
CHUNK_FILE = "chunk_{index:05d}.npz"
BASE_RESERVE_S = 10.0      # kept back for writing and verifying the submission
SINGLE_THREAD_ROWS = 50_000  # LightGBM fits on fewer (down-sampled) rows run on one thread
_SPLITS = ("test", "train")  # test first: without test features an image model cannot be submitted


@dataclass
class Config(NotebookConfig):
    """The notebook's parameters (same names, same defaults as its `parameters` cell)."""

    DATA_DIR: str | None = None        # competition folder; None = find it under /kaggle/input, else the demo
    OUTPUT_DIR: str | None = None      # None = the platform's run dir (Drive on Colab, /kaggle/working on Kaggle)
    BUDGET: str | None = None          # "45m", "2h"; None = what the platform allows
    SEED: int = 42
    RUN_NAME: str = "isic"
    MODEL: str = "resnet18"            # timm backbone of the image embeddings
    WEIGHTS: str | None = None         # local pretrained weights file; None = random init (a warning)
    IMG_SIZE: int = 64                 # images are resized to IMG_SIZE x IMG_SIZE
    BATCH_SIZE: int = 128
    EMBED_CHUNK: int = 1024            # images per cache file: the most a killed extraction loses
    EMBED_SHARE: float = 0.5           # at most this share of the time left goes to image embeddings
    IMAGE_PCA: int = 32                # PCA components of the patient-normalised embeddings; 0 = no embeddings
    ON_BAD_IMAGE: str = "raise"        # a missing or corrupt image: "raise", or "skip" (no image features)
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
    DEVICE: str | None = None          # None = CUDA when available

    def check(self) -> None:
        self.at_least(1, "BATCH_SIZE", "EMBED_CHUNK", "LGBM_SEEDS", "MAX_ROUNDS", "EARLY_STOPPING",
                      "NEG_PER_POS", "FINETUNE_EPOCHS", "FINETUNE_NEG_PER_POS")
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
        if self.WEIGHTS is not None and not Path(self.WEIGHTS).expanduser().is_file():
            raise FileNotFoundError(f"WEIGHTS={self.WEIGHTS!r} is not a file: attach the weights as a dataset and "
                                    "point WEIGHTS at the .pth/.safetensors file, or use None (random weights).")


@dataclass
class Competition:
    """The competition's files: metadata of both splits, the HDF5 images, the sample submission."""

    data_dir: Path
    train: pd.DataFrame          # train-metadata.csv
    test: pd.DataFrame           # test-metadata.csv, in the sample submission's row order
    sample: pd.DataFrame         # sample_submission.csv as text
    sample_path: Path
    images: dict[str, Path]      # split -> its HDF5 file

    @property
    def y(self) -> np.ndarray:
        return self.train["target"].to_numpy(dtype=np.int64)


# ----------------------------------------------------------------------------- setup


def start(cfg: Config, **kwargs: Any) -> Run:
    """Open the run: seed, budget, output folder, device (see `kagglekit_nb.start_run`)."""
    return _start(cfg, **kwargs)


def _demo(run: Run) -> Path:
    from .. import env
    from ..demo.isic import make_isic_demo

    demo = env.working_dir(run.platform) / "kagglekit_demo" / "isic"
    if not (demo / SAMPLE_FILE).exists():
        make_isic_demo(demo, seed=0)
    return demo


def _find_data_dir(cfg: Config, run: Run) -> Path:
    return find_data_dir(cfg.DATA_DIR, run, required=REQUIRED_FILES,
                         what=f"competition data ({', '.join(REQUIRED_FILES)})", demo=lambda: _demo(run),
                         demo_note="the bundled synthetic ISIC demo")


def load_competition(cfg: Config, run: Run) -> Competition:
    """Read both metadata files and the sample submission; test rows follow the sample's order."""
    data_dir = _find_data_dir(cfg, run)
    train, test = read_metadata(data_dir)
    sample_path = data_dir / SAMPLE_FILE
    if not sample_path.is_file():
        raise FileNotFoundError(f"{sample_path} does not exist; the submission's format comes from it.")
    sample = pd.read_csv(sample_path, dtype=str, keep_default_na=False)
    if list(sample.columns[:1]) != ["isic_id"] or len(sample.columns) != 2:
        raise ValueError(f"{sample_path} has the columns {list(sample.columns)}; an ISIC 2024 sample submission "
                         "has two: isic_id,target.")
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
    run.log(f"{len(train)} train lesions ({int(y.sum())} malignant, {y.mean():.2%}) of "
            f"{train['patient_id'].nunique()} patients; {len(test)} test lesions of "
            f"{test['patient_id'].nunique()} patients")
    return Competition(data_dir=data_dir, train=train, test=test, sample=sample, sample_path=sample_path,
                       images=images)


def make_folds(comp: Competition, cfg: Config, run: Run) -> pd.Series:
    """StratifiedGroupKFold by patient_id (no patient in two folds), made once and saved (`folds.csv`)."""
    folds = _folds.make_folds(comp.train["isic_id"], comp.train["target"], n_splits=cfg.FOLDS, seed=cfg.SEED,
                              path=run.dir / _folds.FOLDS_FILE, groups=comp.train["patient_id"])
    per_patient = pd.Series(folds.to_numpy()).groupby(comp.train["patient_id"].to_numpy()).nunique()
    shared = per_patient.index[per_patient > 1]
    if len(shared):
        raise ValueError(f"{run.dir / _folds.FOLDS_FILE} puts patient {shared[0]!r} in several folds: it was not "
                         "made by patient. Delete it (or use a new OUTPUT_DIR) to split again.")
    per_fold = comp.train.groupby(folds.to_numpy())["target"].agg(["size", "sum"])
    run.log("folds (lesions / malignant): " + ", ".join(f"{k}: {int(r['size'])}/{int(r['sum'])}"
                                                        for k, r in per_fold.iterrows()))
    return folds


# ----------------------------------------------------------------------------- embeddings


@dataclass
class Embeddings:
    """Image embeddings of both splits; a row of NaN has none (not extracted yet, or a skipped image)."""

    key: str
    train: np.ndarray
    test: np.ndarray
    skipped: list[str] = field(default_factory=list)
    stop_reason: str = "completed"

    def rows(self, split: str) -> int:
        """How many rows of `split` have an embedding."""
        values = getattr(self, split)
        return int((~np.isnan(values).any(1)).sum()) if values.size else 0

    @property
    def complete(self) -> bool:
        return self.stop_reason == "completed"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def embedding_key(cfg: Config) -> str:
    """The cache folder's name: model, image size, and the weights file's content (or the seed of the
    random weights), e.g. `resnet18-64px-random-seed42` or `resnet18-64px-w3fa1c2d9e8b7a6f5`."""
    weights = f"random-seed{cfg.SEED}" if cfg.WEIGHTS is None else \
        "w" + _file_digest(Path(cfg.WEIGHTS).expanduser())[:16]
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', cfg.MODEL)}-{cfg.IMG_SIZE}px-{weights}"


def _backbone(cfg: Config, num_classes: int, run: Run | None = None) -> torch.nn.Module:
    """A timm model; pretrained weights only from the local WEIGHTS file, never downloaded."""
    import timm

    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if cfg.WEIGHTS is not None:
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(Path(cfg.WEIGHTS).expanduser())})
    else:
        message = (f"WEIGHTS=None: {cfg.MODEL} runs with random weights (pretrained=False); its embeddings carry "
                   "far less signal than pretrained ones. Attach a weights file and set WEIGHTS to its path.")
        warnings.warn(message, stacklevel=3)
        if run is not None:
            run.log(f"WARNING: {message}")
    torch.manual_seed(cfg.SEED)  # random weights are a function of SEED (the cache key says so)
    try:
        return timm.create_model(cfg.MODEL, **kwargs)
    except RuntimeError as e:
        if "Unknown model" not in str(e):
            raise
        close = timm.list_models(f"*{cfg.MODEL.split('_')[0][:6]}*")[:8]
        raise ValueError(f"MODEL={cfg.MODEL!r} is not a timm model; similar names: {close}.") from None


def _mean_std(model: torch.nn.Module) -> tuple[list[float], list[float]]:
    """The normalisation the model was (or would be) pretrained with, from its own timm config."""
    from timm.data import resolve_model_data_config

    data = resolve_model_data_config(model)
    return [float(v) for v in data["mean"]], [float(v) for v in data["std"]]


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an .npz atomically: a temp file in the same folder, fsync, then `os.replace`."""
    write_atomic(path, lambda fh: np.savez(fh, **arrays), binary=True)


def _load_chunk(path: Path, ids: np.ndarray, dim: int) -> np.ndarray | None:
    """A cached chunk's embeddings if the file is readable and holds exactly `ids`, else None."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if data["ids"].tolist() != ids.tolist() or data["emb"].shape != (len(ids), dim):
                return None
            return data["emb"].astype(np.float32, copy=False)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _amp(device: torch.device) -> torch.dtype | None:
    from ..options import amp_dtype

    if device.type != "cuda":
        return None
    return amp_dtype(None, "cuda", torch.cuda.get_device_capability(device))


class _Extraction:
    """One split's chunked extraction: reuse valid chunk files, compute and save the others."""

    def __init__(self, split: str, ids: np.ndarray, directory: Path, chunk: int, dim: int):
        self.split, self.ids, self.dir, self.chunk, self.dim = split, ids, directory, chunk, dim
        self.values = np.full((len(ids), dim), np.nan, np.float32)
        self.cached = self.computed = 0
        self.skipped: list[str] = []

    def bounds(self, c: int) -> tuple[int, int]:
        return c * self.chunk, min((c + 1) * self.chunk, len(self.ids))

    def path(self, c: int) -> Path:
        return self.dir / CHUNK_FILE.format(index=c)

    def reuse(self, log: Callable[[str], None]) -> list[int]:
        """Load every valid cached chunk; return the chunks still to compute."""
        todo = []
        for c in range(math.ceil(len(self.ids) / self.chunk)):
            lo, hi = self.bounds(c)
            found = _load_chunk(self.path(c), self.ids[lo:hi], self.dim) if self.path(c).exists() else None
            if found is None:
                if self.path(c).exists():
                    log(f"embeddings: {self.path(c).name} of {self.split} is unreadable or holds other images: "
                        "computing it again")
                todo.append(c)
                continue
            self.values[lo:hi] = found
            self.cached += hi - lo
            self.skipped += [str(i) for i in self.ids[lo:hi][np.isnan(found).any(1)]]  # skipped when computed
        return todo

    def save(self, c: int, emb: np.ndarray, rows: np.ndarray) -> None:
        lo, hi = self.bounds(c)
        missing = np.setdiff1d(np.arange(lo, hi), rows)
        self.skipped += [str(self.ids[i]) for i in missing]
        _save_npz(self.path(c), ids=self.ids[lo:hi], emb=emb)
        self.values[lo:hi] = emb
        self.computed += hi - lo


def _run_extraction(ext: _Extraction, todo: list[int], images: HDF5Images, model: torch.nn.Module,
                    cfg: Config, run: Run, deadline: float) -> str | None:
    """Compute the chunks in `todo`, saving each as it completes; a reason string if it stopped early."""
    from ..loaders import default_workers

    device = run.device
    batches: list[list[int]] = []
    chunk_of: list[int] = []
    for c in todo:
        lo, hi = ext.bounds(c)
        for s in range(lo, hi, cfg.BATCH_SIZE):
            batches.append(list(range(s, min(s + cfg.BATCH_SIZE, hi))))
            chunk_of.append(c)
    workers = default_workers(device) if cfg.NUM_WORKERS is None else cfg.NUM_WORKERS
    loader = DataLoader(images, batch_sampler=batches, num_workers=workers, collate_fn=collate_skip_none,
                        pin_memory=device.type == "cuda")
    dtype, clock = _amp(device), run.budget.clock
    batches_in = Counter(chunk_of)
    batch_s: float | None = None
    current, buf, got, in_chunk = None, None, [], 0
    mark = clock()
    step = max(1, len(batches) // 10)
    it = iter(loader)
    for b, (rows, c) in enumerate(zip(batches, chunk_of)):
        now = clock()
        if c != current:  # a new chunk: start it only if it fits the embedding share of the budget
            need = 0.0 if batch_s is None else batch_s * batches_in[c]
            if now + need > deadline or not run.budget.fits(need):
                return f"budget: EMBED_SHARE={cfg.EMBED_SHARE} of the time is used"
            lo, hi = ext.bounds(c)
            current, buf, got, in_chunk = c, np.full((hi - lo, ext.dim), np.nan, np.float32), [], 0
        elif batch_s is not None and not run.budget.fits(batch_s):
            return "budget: no time left (the chunk in progress is dropped)"
        batch = next(it)
        in_chunk += len(rows)
        if batch is not None:
            x, index = batch
            x = x.to(device, non_blocking=True)
            with torch.inference_mode(), (torch.autocast(device.type, dtype=dtype) if dtype else
                                          contextlib.nullcontext()):
                out = model(x).float().cpu().numpy()
            lo = ext.bounds(c)[0]
            buf[index.numpy() - lo] = out
            got.append(index.numpy())
        if b + 1 == len(batches) or chunk_of[b + 1] != c:
            ext.save(c, buf, np.concatenate(got) if got else np.empty(0, int))
        took = clock() - now
        batch_s = took if batch_s is None else 0.8 * batch_s + 0.2 * took
        if (b + 1) % step == 0:
            rate = sum(len(r) for r in batches[:b + 1]) / max(clock() - mark, 1e-9)
            done = ext.cached + ext.computed + (0 if b + 1 == len(batches) or chunk_of[b + 1] != c else in_chunk)
            run.log(f"embeddings: {ext.split} {done}/{len(ext.ids)} images ({rate:.0f} img/s)")
    return None


def embeddings(comp: Competition, cfg: Config, run: Run) -> Embeddings | None:
    """Embeddings of every train and test image from the timm backbone (pooled features), cached.

    The cache folder is named by `embedding_key` (model, size, weights); each chunk of EMBED_CHUNK
    images is one file written atomically and reused only if it holds the same isic_ids. Extraction
    (test first) stops when EMBED_SHARE of the time that was left is spent, or the budget's reserve
    is reached; rows not extracted are NaN and a rerun with the same OUTPUT_DIR continues. A skipped
    image (ON_BAD_IMAGE="skip") is a NaN row too, and is listed in `run.json`. None when IMAGE_PCA=0.
    """
    if cfg.IMAGE_PCA == 0:
        run.log("IMAGE_PCA=0: no embedding features")
        return None
    _close_setup(run)
    run.budget.reserve_s = max(run.budget.reserve_s, _base_reserve(len(comp.test)))
    key = embedding_key(cfg)
    root = run.dir / EMBED_DIR / key
    with run.budget.timed("embeddings"):
        model = _backbone(cfg, num_classes=0, run=run).to(run.device).eval()
        if run.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        mean, std = _mean_std(model)
        transform = ResizeToTensor(cfg.IMG_SIZE, mean=mean, std=std)
        root.mkdir(parents=True, exist_ok=True)
        write_json(root / "meta.json", {"model": cfg.MODEL, "img_size": cfg.IMG_SIZE, "weights": cfg.WEIGHTS,
                                        "seed": cfg.SEED, "dim": int(model.num_features), "mean": mean, "std": std})
        left = run.budget.training_left()
        deadline = run.budget.clock() + cfg.EMBED_SHARE * left if math.isfinite(left) else math.inf
        result, reason = {}, None
        t0 = run.budget.clock()
        for split in _SPLITS:
            frame = comp.test if split == "test" else comp.train
            ids = frame["isic_id"].to_numpy(dtype=str)
            directory = root / split / f"chunks{cfg.EMBED_CHUNK}"
            directory.mkdir(parents=True, exist_ok=True)
            ext = _Extraction(split, ids, directory, cfg.EMBED_CHUNK, int(model.num_features))
            todo = ext.reuse(run.log)
            if todo and reason is None:
                images = HDF5Images(comp.images[split], ids, transform=transform, on_error=cfg.ON_BAD_IMAGE,
                                    return_index=True)
                reason = _run_extraction(ext, todo, images, model, cfg, run, deadline)
                images.close()
            result[split] = ext
            done = ext.cached + ext.computed
            run.log(f"embeddings: {split} {done}/{len(ids)} images ({ext.cached} from the cache, {ext.computed} "
                    f"computed){'; skipped: ' + ', '.join(ext.skipped[:5]) if ext.skipped else ''}")
        seconds = run.budget.clock() - t0
    emb = Embeddings(key=key, train=result["train"].values, test=result["test"].values,
                     skipped=result["test"].skipped + result["train"].skipped, stop_reason=reason or "completed")
    computed = sum(e.computed for e in result.values())
    run.record["embeddings"] = {
        "key": key, "dir": str(root), "train_rows": emb.rows("train"), "test_rows": emb.rows("test"),
        "computed": computed, "cached": sum(e.cached for e in result.values()), "seconds": round(seconds, 1),
        "images_per_s": round(computed / seconds, 1) if computed and seconds > 0 else None,
        "skipped": emb.skipped[:100], "skipped_count": len(emb.skipped), "stop_reason": emb.stop_reason}
    if reason:
        run.log(f"embeddings stopped ({reason}): {emb.rows('train')}/{len(comp.train)} train and "
                f"{emb.rows('test')}/{len(comp.test)} test rows have one; rerun with the same OUTPUT_DIR to continue")
    run.save()
    return emb


# ----------------------------------------------------------------------------- fine-tuning (optional)


@dataclass
class ImageScores:
    """Fine-tuned image scores: out-of-fold for train (NaN where no fold model), fold mean for test."""

    train: np.ndarray
    test: np.ndarray
    folds_used: list[int]


class _FlipResize(ResizeToTensor):
    """ResizeToTensor plus random horizontal and vertical flips (numpy's RNG, seeded per item)."""

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        x = super().__call__(image)
        dims = [d for d, flip in ((2, np.random.random() < 0.5), (1, np.random.random() < 0.5)) if flip]
        return torch.flip(x, dims=dims) if dims else x


class _Labelled(Dataset):
    """(image, label) of selected rows of an HDF5Images; a skipped image is a blank (mean-colour) one."""

    def __init__(self, images: HDF5Images, labels: np.ndarray, rows: np.ndarray, size: int):
        self.images, self.labels, self.rows, self.size = images, labels, np.asarray(rows), size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.rows[i])
        x = self.images[row]
        if x is None:
            x = torch.zeros(3, self.size, self.size)
        return x, torch.tensor(int(self.labels[row]), dtype=torch.long)


def _balanced_rows(y: np.ndarray, rows: np.ndarray, neg_per_pos: int | None, rng: np.random.Generator) -> np.ndarray:
    """Every positive of `rows` and at most `neg_per_pos` negatives per positive (drawn with `rng`)."""
    pos, neg = rows[y[rows] == 1], rows[y[rows] == 0]
    if neg_per_pos is not None and len(neg) > neg_per_pos * max(1, len(pos)):
        neg = rng.choice(neg, neg_per_pos * max(1, len(pos)), replace=False)
    return np.sort(np.concatenate([pos, neg]))


def _finetune_meta(cfg: Config, fold: int) -> dict[str, Any]:
    return {"model": cfg.MODEL, "img_size": cfg.IMG_SIZE, "weights": cfg.WEIGHTS, "fold": fold, "seed": cfg.SEED,
            "lr": cfg.FINETUNE_LR, "batch_size": cfg.BATCH_SIZE, "neg_per_pos": cfg.FINETUNE_NEG_PER_POS,
            "folds": cfg.FOLDS}


def finetune(comp: Competition, folds: pd.Series, cfg: Config, run: Run) -> ImageScores | None:
    """Fine-tune the backbone per fold (FINETUNE=True) with balanced sampling; None when off.

    Training runs through `kagglekit_nb.cv.train_folds` (checkpoints, exact resume, budget). Each
    training row's score comes from the model of its own fold, which never trained on it (out of
    fold); test scores are averaged over the fold models that exist.
    """
    if not cfg.FINETUNE:
        return None
    from ..cv import OOF_FILE, FoldSetup, fold_models, load_fold_model, train_folds
    from ..loaders import make_loader
    from ..loop import predict as loop_predict

    y, fold_of = comp.y, folds.to_numpy()
    ids = comp.train["isic_id"].to_numpy(dtype=str)
    _close_setup(run)
    mean, std = _mean_std(_backbone(cfg, num_classes=2, run=run))
    train_tf = _FlipResize(cfg.IMG_SIZE, mean=mean, std=std)
    eval_tf = ResizeToTensor(cfg.IMG_SIZE, mean=mean, std=std)

    def setup(k: int) -> FoldSetup:
        rng = np.random.default_rng([cfg.SEED, k])
        rows = _balanced_rows(y, np.flatnonzero(fold_of != k), cfg.FINETUNE_NEG_PER_POS, rng)
        val = np.flatnonzero(fold_of == k)
        model = _backbone(cfg, num_classes=2).to(run.device)
        train_ds = _Labelled(HDF5Images(comp.images["train"], ids, transform=train_tf, on_error=cfg.ON_BAD_IMAGE),
                             y, rows, cfg.IMG_SIZE)
        val_ds = _Labelled(HDF5Images(comp.images["train"], ids, transform=eval_tf, on_error=cfg.ON_BAD_IMAGE),
                           y, val, cfg.IMG_SIZE)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.FINETUNE_LR, weight_decay=1e-4)
        return FoldSetup(
            model=model, optimizer=optimizer,
            train_loader=make_loader(train_ds, cfg.BATCH_SIZE, train=True, seed=cfg.SEED + k, device=run.device,
                                     num_workers=cfg.NUM_WORKERS),
            val_loader=make_loader(val_ds, cfg.BATCH_SIZE, train=False, device=run.device,
                                   num_workers=cfg.NUM_WORKERS),
            loss_fn=torch.nn.CrossEntropyLoss(), val_ids=ids[val].tolist(), val_targets=y[val],
            make_scheduler=lambda opt, total: torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=cfg.FINETUNE_LR, total_steps=total, pct_start=0.2),
            meta={**_finetune_meta(cfg, k), "train_rows": len(rows)})

    n_test = len(comp.test)
    base = run.budget.reserve_s

    def reserve(s_per_item: float) -> float:  # test predictions by every fold model, then LightGBM's half
        left = run.budget.remaining()
        lgbm = 0.5 * max(0.0, left - base) if math.isfinite(left) else 0.0
        return 2.0 * s_per_item * n_test * cfg.FOLDS + max(base, _base_reserve(n_test)) + lgbm

    keys = ("cv_score", "folds_done", "folds", "plan", "stop_reason", "resumed_from")
    result = train_folds(run, n_folds=cfg.FOLDS, setup=setup, metric=get_metric("pauc80"),
                         max_epochs=cfg.FINETUNE_EPOCHS, predict_cost=reserve,
                         expected_meta=lambda k: _finetune_meta(cfg, k))
    run.record["finetune"] = {k: run.record.pop(k, None) for k in keys}
    run.budget.reserve_s = base
    oof = np.full(len(ids), np.nan)
    position = {i: n for n, i in enumerate(ids)}
    for k in sorted(result.folds):
        path = run.dir / OOF_FILE.format(fold=k)
        if path.exists():
            frame = pd.read_csv(path, dtype={"id": str})
            oof[frame["id"].map(position).to_numpy()] = frame["p1"].to_numpy()
    models = fold_models(run, cfg.FOLDS)
    test = np.full(n_test, np.nan)
    if models:
        with run.budget.timed("predict"):
            images = HDF5Images(comp.images["test"], comp.test["isic_id"], transform=eval_tf,
                                on_error=cfg.ON_BAD_IMAGE)
            loader = make_loader(_Labelled(images, np.zeros(n_test, int), np.arange(n_test), cfg.IMG_SIZE),
                                 cfg.BATCH_SIZE, train=False, device=run.device, num_workers=cfg.NUM_WORKERS)
            total = np.zeros(n_test)
            for k, path, _ in models:
                weights, _meta = load_fold_model(path)
                model = _backbone(cfg, num_classes=2).to(run.device)
                model.load_state_dict(weights)
                total += loop_predict(model, loader, device=run.device, autocast=_amp(run.device))[:, 1]
            test = total / len(models)
    used = [k for k, _, _ in models]
    run.log(f"fine-tuned image scores: out-of-fold for {int(np.isfinite(oof).sum())}/{len(ids)} train rows, "
            f"test averaged over fold models {used}")
    run.save()
    return ImageScores(train=oof, test=test, folds_used=used)


# ----------------------------------------------------------------------------- features


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
    embeddings (fitted on train rows) and, with fine-tuning, the out-of-fold image score and its
    per-patient z-score. Never a train-only column."""
    _close_setup(run)
    with run.budget.timed("features"):
        X_train, X_test, tab = make_features(comp.train, comp.test)
        image: list[str] = []
        if emb is not None and emb.rows("train") > 1:
            from sklearn.decomposition import PCA
            from sklearn.preprocessing import StandardScaler

            z_train = patient_normalise(emb.train, comp.train["patient_id"])
            z_test = patient_normalise(emb.test, comp.test["patient_id"])
            fit_rows = ~np.isnan(z_train).any(1)
            n = min(cfg.IMAGE_PCA, int(fit_rows.sum()) - 1, z_train.shape[1])
            scaler = StandardScaler().fit(z_train[fit_rows])
            pca = PCA(n, random_state=cfg.SEED).fit(scaler.transform(z_train[fit_rows]))
            names = [f"img_pc{i}" for i in range(n)]
            for X, z in ((X_train, z_train), (X_test, z_test)):
                block = np.full((len(z), n), np.nan, np.float32)
                ok = ~np.isnan(z).any(1)
                if ok.any():
                    block[ok] = pca.transform(scaler.transform(z[ok]))
                X[names] = block
            image += names
            run.log(f"image features: {n} PCA components of the patient-normalised {emb.train.shape[1]}-d "
                    f"embeddings ({pca.explained_variance_ratio_.sum():.0%} of their variance); "
                    f"{int(fit_rows.sum())}/{len(fit_rows)} train rows have them")
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


# ----------------------------------------------------------------------------- LightGBM


@dataclass
class ModelResult:
    """One model's fits (seed, fold, booster file), its out-of-fold predictions and score."""

    name: str
    dir: Path
    n_folds: int
    fits: list[tuple[int, int, Path]] = field(default_factory=list)
    oof: np.ndarray | None = None          # probability, mean over seeds; NaN where no fit covers the row
    score: float | None = None             # OOF pAUC above 80% TPR (see `oof_pauc`)
    fold_scores: dict[int, float] = field(default_factory=dict)  # pAUC of each fold's own rows
    best_iterations: list[int] = field(default_factory=list)

    def files(self, seed: int, fold: int) -> tuple[Path, Path]:
        """(booster file, out-of-fold predictions file) of one fit."""
        return self.dir / f"seed{seed}_fold{fold}.txt", self.dir / f"seed{seed}_fold{fold}.npz"

    @property
    def seeds_done(self) -> int:
        """Seeds with a fit for every fold."""
        per_seed = Counter(s for s, _, _ in self.fits)
        return sum(1 for n in per_seed.values() if n == self.n_folds)


@dataclass
class LGBMResult:
    """The three models and why training ended."""

    models: dict[str, ModelResult]
    stop_reason: str = "completed"

    def scores(self) -> dict[str, float | None]:
        return {name: m.score for name, m in self.models.items()}

    def table(self) -> pd.DataFrame:
        rows = {name: {"oof_pauc": m.score,
                       "fold_pauc_mean": float(np.mean(list(m.fold_scores.values()))) if m.fold_scores else None,
                       "fits": len(m.fits), "seeds_done": m.seeds_done,
                       "oof_rows": int(np.isfinite(m.oof).sum()) if m.oof is not None else 0,
                       "median_rounds": float(np.median(m.best_iterations)) if m.best_iterations else None}
                for name, m in self.models.items()}
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")


def _lgbm_params(cfg: Config) -> dict[str, Any]:
    return {"objective": "binary", "metric": "auc", "learning_rate": cfg.LEARNING_RATE,
            "num_leaves": cfg.NUM_LEAVES, "min_data_in_leaf": 10, "feature_fraction": 0.5,
            "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0, "verbose": -1,
            "deterministic": True, "force_row_wise": True}


def _digest(X: pd.DataFrame, y: np.ndarray, fold_of: np.ndarray, settings: dict[str, Any]) -> str:
    """What a saved fit depends on: the features' names and values, labels, folds and settings."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(json.dumps(list(X.columns)).encode())
    h.update(pd.util.hash_pandas_object(X, index=False).to_numpy().tobytes())
    h.update(np.ascontiguousarray(y, np.int64).tobytes())
    h.update(np.ascontiguousarray(fold_of, np.int64).tobytes())
    return h.hexdigest()[:12]


def _budget_callback(run: Run) -> Callable[[Any], None]:
    """Stop boosting (keeping the rounds so far) once the budget's reserve is reached."""
    import lightgbm as lgb

    def callback(env: Any) -> None:
        if not run.budget.fits(0.0):
            raise lgb.callback.EarlyStopException(env.iteration, env.evaluation_result_list)

    callback.order = 40  # type: ignore[attr-defined]  # after early stopping's own check
    return callback


def _fit(X: pd.DataFrame, y: np.ndarray, fold_of: np.ndarray, k: int, seed: int, cfg: Config, run: Run,
         threads: int) -> tuple[Any, np.ndarray, np.ndarray, bool, float]:
    """One LightGBM model on the folds other than `k` (negatives down-sampled), early-stopped on fold `k`.

    Returns (booster, validation rows, their predictions, stopped by the budget, seconds per predicted row).
    """
    import lightgbm as lgb

    train_rows = np.flatnonzero(fold_of != k)
    val = np.flatnonzero(fold_of == k)
    rows = _balanced_rows(y, train_rows, cfg.NEG_PER_POS, np.random.default_rng([cfg.SEED, seed, k]))
    # OpenMP threads that wait for a busy core cost far more than they bring on a few thousand rows.
    threads = 1 if len(rows) < SINGLE_THREAD_ROWS else threads
    params = {**_lgbm_params(cfg), "seed": cfg.SEED + seed, "num_threads": threads}
    if cfg.NEG_PER_POS is None:
        params["scale_pos_weight"] = float((y[rows] == 0).sum() / max(1, (y[rows] == 1).sum()))
    dtrain = lgb.Dataset(X.iloc[rows], y[rows])
    dval = lgb.Dataset(X.iloc[val], y[val], reference=dtrain)
    booster = lgb.train(params, dtrain, num_boost_round=cfg.MAX_ROUNDS, valid_sets=[dval],
                        callbacks=[lgb.early_stopping(cfg.EARLY_STOPPING, verbose=False), _budget_callback(run)])
    stopped = not run.budget.fits(0.0)
    t0 = time.perf_counter()
    pred = booster.predict(X.iloc[val], num_iteration=booster.best_iteration)
    per_row = (time.perf_counter() - t0) / max(1, len(val))
    return booster, val, pred, stopped, per_row


def _load_fit(model_path: Path, fit_path: Path) -> dict[str, Any] | None:
    """A finished fit saved by an earlier session (its booster file and predictions), else None."""
    if not (model_path.exists() and fit_path.exists()):
        return None
    try:
        with np.load(fit_path, allow_pickle=False) as data:
            if not bool(data["complete"]):
                return None
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _fit_and_save(res: ModelResult, X: pd.DataFrame, y: np.ndarray, fold_of: np.ndarray, k: int, seed: int,
                  cfg: Config, run: Run) -> tuple[dict[str, Any], bool, float]:
    """Fit one model, save its booster and out-of-fold predictions (each file atomically).

    Returns (the saved record, whether the budget cut the fit short, seconds per predicted row)."""
    from ..hardware import cpu_count

    booster, val, pred, stopped, per_row = _fit(X, y, fold_of, k, seed, cfg, run, cpu_count())
    model_path, fit_path = res.files(seed, k)
    tmp = model_path.with_name(model_path.name + ".tmp")
    booster.save_model(str(tmp), num_iteration=booster.best_iteration)
    os.replace(tmp, model_path)
    # Saved last: its presence marks the fit done. A fit cut short is used now and redone next session.
    _save_npz(fit_path, rows=val, pred=pred, best_iteration=booster.best_iteration, complete=not stopped)
    return {"rows": val, "pred": pred, "best_iteration": booster.best_iteration}, stopped, per_row


def train_lgbm(feats: Features, folds: pd.Series, cfg: Config, run: Run) -> LGBMResult:
    """LightGBM for each model (tabular-only, image-only, combined) x LGBM_SEEDS x folds, inside the budget.

    Seed by seed (every model's folds of seed 0 first), each fit early-stopped on its validation fold;
    fits saved by an earlier session with the same inputs are reused. Stops when the next fit would
    eat into the reserve kept for predict + verify. The OOF pAUC of each model (its predictions averaged
    over the seeds done) goes to `run.json` as `oof_pauc`.
    """
    _close_setup(run)
    run.budget.reserve_s = max(run.budget.reserve_s, _base_reserve(len(feats.test)))
    fold_of, y = folds.to_numpy(), feats.y
    settings = {**_lgbm_params(cfg), "neg_per_pos": cfg.NEG_PER_POS, "max_rounds": cfg.MAX_ROUNDS,
                "early_stopping": cfg.EARLY_STOPPING, "seed": cfg.SEED}
    results = {}
    for name, cols in feats.columns.items():
        directory = run.dir / LGBM_DIR / f"{name}-{_digest(feats.train[cols], y, fold_of, settings)}"
        directory.mkdir(parents=True, exist_ok=True)
        results[name] = ModelResult(name=name, dir=directory, n_folds=cfg.FOLDS)
    sums = {name: np.zeros(len(y)) for name in results}
    counts = {name: np.zeros(len(y)) for name in results}
    fit_s: dict[str, float] = {}
    per_row, reused, stop_reason = 0.0, 0, "completed"
    with run.budget.timed("train"):
        for seed, name, k in itertools.product(range(cfg.LGBM_SEEDS), results, range(cfg.FOLDS)):
            res = results[name]
            saved = _load_fit(*res.files(seed, k))
            if saved is not None:
                reused += 1
            else:
                if not run.budget.fits(1.5 * fit_s.get(name, max(fit_s.values(), default=0.0))):
                    stop_reason = "budget: the next fit would eat into the time kept for predict + verify"
                    break
                t0 = run.budget.clock()
                saved, stopped, row_s = _fit_and_save(res, feats.train[feats.columns[name]], y, fold_of, k, seed,
                                                      cfg, run)
                fit_s[name], per_row = run.budget.clock() - t0, max(per_row, row_s)
                if stopped:
                    stop_reason = "budget: a fit was cut short to keep time for predict + verify"
            res.fits.append((seed, k, res.files(seed, k)[0]))
            res.best_iterations.append(int(saved["best_iteration"]))
            sums[name][saved["rows"]] += saved["pred"]
            counts[name][saved["rows"]] += 1
            n_fits = max(len(r.fits) for r in results.values())
            run.budget.reserve_s = max(run.budget.reserve_s, _predict_reserve(per_row, len(feats.test), n_fits))
            if stop_reason != "completed":
                break
    for name, res in results.items():
        covered = counts[name] > 0
        res.oof = np.where(covered, sums[name] / np.maximum(counts[name], 1), np.nan)
        res.score = oof_pauc(y, res.oof, fold_of)
        res.fold_scores = {k: partial_auc(y[rows], res.oof[rows]) for k in range(cfg.FOLDS)
                           if len(set(y[(rows := covered & (fold_of == k))])) == 2}
    out = LGBMResult(models=results, stop_reason=stop_reason)
    _report(out, reused, run)
    return out


def _report(out: LGBMResult, reused: int, run: Run) -> None:
    table = out.table()
    run.log("LightGBM, out-of-fold pAUC above 80% TPR (max 0.2):\n" + table.to_string(float_format="%.4f"))
    if reused:
        run.log(f"{reused} fit(s) reused from {run.dir / LGBM_DIR} (same features, folds and settings)")
    if out.stop_reason != "completed":
        run.log(f"LightGBM stopped early ({out.stop_reason}); the fits that exist are used")
    run.record["oof_pauc"] = {name: out.scores().get(name) for name in MODELS}  # None: not trained (no features)
    run.record["folds_done"] = sorted(set.intersection(*({k for _, k, _ in m.fits} for m in out.models.values())))
    run.record["lgbm_fits_reused"] = reused
    run.record["lgbm"] = {name: {"fits": len(m.fits), "seeds_done": m.seeds_done, "fold_pauc": m.fold_scores,
                                 "oof_rows": int(table.loc[name, "oof_rows"]), "dir": str(m.dir),
                                 "best_iterations": m.best_iterations} for name, m in out.models.items()}
    run.record["lgbm_stop_reason"] = out.stop_reason
    run.save()


def oof_pauc(y: np.ndarray, oof: np.ndarray, fold_of: np.ndarray) -> float | None:
    """pAUC above 80% TPR of out-of-fold predictions, each fold's turned into percentiles first.

    Every fold has its own models, stopped at their own round on their own down-sampled rows, so
    their probabilities are on different scales: pooled as they are, a fold whose model stopped early
    (all its scores near the base rate) scrambles the ranking and the score says more about
    calibration than about ranking. The test submission is one average of all models, where only the
    order within one set of predictions matters, which is what the percentiles keep. Rows without a
    prediction (NaN) are left out; None when the rest lack a positive or a negative.
    """
    covered = ~np.isnan(oof)
    if len(set(np.asarray(y)[covered].tolist())) != 2:
        return None
    pct = pd.Series(np.where(covered, oof, np.nan)).groupby(np.asarray(fold_of)).rank(pct=True).to_numpy()
    return partial_auc(np.asarray(y)[covered], pct[covered])


def _close_setup(run: Run) -> None:
    """Book the time before the first timed step (kernel start, imports, loading, folds) as "setup"."""
    if "setup" not in run.budget.phases:
        run.budget.add_phase("setup", run.budget.elapsed() - sum(run.budget.phases.values()))


def _base_reserve(n_test: int) -> float:
    """Time kept for the test features, writing and verifying: a margin plus ~0.1 ms per test row."""
    return BASE_RESERVE_S + 1e-4 * n_test


def _predict_reserve(per_row_s: float, n_test: int, n_fits: int) -> float:
    return _base_reserve(n_test) + 1.5 * per_row_s * n_test * n_fits


# ----------------------------------------------------------------------------- predict & submit


def _choose(models: LGBMResult, feats: Features, cfg: Config, run: Run) -> ModelResult | None:
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


def predict(feats: Features, models: LGBMResult, cfg: Config, run: Run) -> np.ndarray | None:
    """Test probabilities of the SUBMIT model: the mean over every (seed, fold) fit that exists.
    None when no model was fitted (the emergency baseline is written then)."""
    import lightgbm as lgb

    from ..hardware import cpu_count

    chosen = _choose(models, feats, cfg, run)
    if chosen is None:
        run.log("no LightGBM model was fitted: the emergency baseline will be written instead")
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
    run.record["predicted_with"] = [f"seed{s}_fold{k}" for s, k, _ in chosen.fits]
    score = "n/a" if chosen.score is None else f"{chosen.score:.4f}"
    run.log(f"predicted {len(X)} test lesions with the {chosen.name} model: mean of {len(chosen.fits)} fits "
            f"(OOF pAUC {score})")
    return probs


def write_submission(comp: Competition, probs: np.ndarray | None, run: Run) -> Path:
    """Write `submission.csv` (isic_id,target in the sample's order); the training positive rate
    everywhere when `probs` is None."""
    from ..submission import baseline, write_csv

    path = run.dir / "submission.csv"
    if probs is None:
        sub = baseline(comp.sample, train_labels=comp.y.tolist(), kind="binary_proba")
        run.record["submission"] = "emergency baseline (training positive rate)"
    else:
        if len(probs) != len(comp.sample):
            raise ValueError(f"{len(probs)} predictions for {len(comp.sample)} rows of {SAMPLE_FILE}.")
        sub = pd.DataFrame({"isic_id": comp.sample["isic_id"], "target": np.clip(probs, 0.0, 1.0)})
        run.record["submission"] = "model"
    write_csv(sub, path)
    return path


def finish(comp: Competition, path: Path, run: Run) -> Any:
    """Verify the submission against the sample, write verification.json and run.json.

    An invalid submission is replaced by the emergency baseline and the notebook fails with reasons.
    """
    from ..submission import finalize

    try:
        with run.budget.timed("verify"):
            report = finalize(path, comp.sample_path, run.dir, train_labels=comp.y.tolist(), kind="binary_proba")
    finally:
        run.save()
    run.log(f"submission {path} is valid; report in {run.dir / 'verification.json'}")
    return report


# ----------------------------------------------------------------------------- plots


def plot_results(comp: Competition, models: LGBMResult, folds: pd.Series, run: Run) -> dict[str, Path]:
    """The run's plots, saved in `<run>/plots` and shown in the notebook: time per phase against the
    budget, and the ROC curve of each model's out-of-fold predictions (ranked within their fold, as
    `oof_pauc` scores them) with the region above 80% TPR shaded. A model without predictions yet is
    skipped with a log line."""
    from .. import plots

    out: dict[str, Path] = {}
    if run.budget.phases:
        out["time_bar"] = plots.time_bar(run)
    fold_of = folds.to_numpy()
    for name, m in models.models.items():
        covered = np.isfinite(m.oof) if m.oof is not None else np.zeros(len(comp.y), bool)
        if not covered.any() or len(set(comp.y[covered].tolist())) < 2:
            run.log(f"no ROC curve for the {name} model: it has no out-of-fold predictions yet")
            continue
        pct = pd.Series(np.where(covered, m.oof, np.nan)).groupby(fold_of).rank(pct=True).to_numpy()
        out[f"roc_{name}"] = plots.roc_pauc(comp.y[covered], pct[covered], run, name=f"roc_pauc_{name}")
    return out
