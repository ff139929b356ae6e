"""ISIC image embeddings: pooled features of a timm backbone for every image, cached on disk and
resumable chunk by chunk.

The cache lives in `<run>/embeddings/<model>-<size>px-<weights>/<split>/chunks<EMBED_CHUNK>/chunk_NNNNN.npz`,
one atomic file per chunk, so a killed extraction continues from the last finished chunk.

With several processes (DEVICES: Kaggle's two T4s, or "cpu:2") the extraction is sharded by chunk:
torchrun workers (`extract_share`, one per GPU) each compute the chunks whose index % processes is
their rank, and the notebook process, which never initialises CUDA, then reads every chunk from the
cache exactly as a resumed session does.
"""
from __future__ import annotations

import contextlib
import json
import math
import re
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ... import distributed
from ..._atomic import write_json
from ...budget import StopSignal, install_sigterm_handler
from ...cv import run_workers, worker_spec
from ...run import Run
from .._config import timm_model, weights_for
from ._time import EMBED_IMAGE, HIDDEN_EMBEDDINGS, declare_reserves, reserve_hidden_embeddings
from .data import Competition, HDF5Images, ResizeToTensor, _save_npz, collate_skip_none

if TYPE_CHECKING:
    from ...weights import Weights
    from .pipeline import Config

__all__ = ["Embeddings", "embedding_key", "embeddings", "extract_share"]

EMBED_DIR = "embeddings"
CHUNK_FILE = "chunk_{index:05d}.npz"
META_FILE = "meta.json"  # the backbone's model, size, weights and embedding size, next to the chunks
_SPLITS = ("test", "train")  # test first: without test features an image model cannot be submitted
EMBED_SHARE_NAME = "embeddings (EMBED_SHARE)"  # the budget's share for extraction


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


def _weights(cfg: Config, run: Run | None = None) -> Weights:
    """The weights the backbone starts from (WEIGHTS: "auto", None or a file; see `kagglekit_nb.weights`),
    recorded in run.json and said once per run."""
    from ...weights import timm_repo

    return weights_for(run, cfg.MODEL, cfg.WEIGHTS, repo=timm_repo(cfg.MODEL))


def embedding_key(cfg: Config, weights: Weights | None = None) -> str:
    """The cache folder's name: model, image size, and the weights file's content (or the seed of the
    random weights), e.g. `resnet18-64px-random-seed42` or `resnet18-64px-w3fa1c2d9e8b7a6f5`."""
    weights = _weights(cfg) if weights is None else weights
    tag = "w" + weights.sha256[:16] if weights.sha256 else f"random-seed{cfg.SEED}"
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', cfg.MODEL)}-{cfg.IMG_SIZE}px-{tag}"


def _backbone(cfg: Config, num_classes: int, run: Run | None = None, weights: Weights | None = None) -> torch.nn.Module:
    """A timm model starting from `weights` (resolved from WEIGHTS when None); random weights are a
    function of SEED (the cache key says so)."""
    from ...weights import timm_kwargs

    weights = _weights(cfg, run) if weights is None else weights
    torch.manual_seed(cfg.SEED)
    return timm_model(cfg.MODEL, num_classes=num_classes, **timm_kwargs(weights))


def _mean_std(model: torch.nn.Module) -> tuple[list[float], list[float]]:
    """The normalisation the model was (or would be) pretrained with, from its own timm config."""
    from timm.data import resolve_model_data_config

    data = resolve_model_data_config(model)
    return [float(v) for v in data["mean"]], [float(v) for v in data["std"]]


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
    from ...options import amp_dtype

    if device.type != "cuda":
        return None
    return amp_dtype(None, "cuda", torch.cuda.get_device_capability(device))


class _Extraction:
    """One split's chunked extraction: reuse valid chunk files, compute and save the others. Of several
    processes, the one of rank `shard[0]` in `shard[1]` owns the chunks whose index % shard[1] is its rank."""

    def __init__(self, split: str, ids: np.ndarray, directory: Path, chunk: int, dim: int,
                 shard: tuple[int, int] = (0, 1)):
        self.split, self.ids, self.dir, self.chunk, self.dim = split, ids, directory, chunk, dim
        self.values = np.full((len(ids), dim), np.nan, np.float32)
        self.cached = self.computed = 0
        self.skipped: list[str] = []
        self.shard = shard
        self.saved: list[int] = []  # the chunks this process computed

    @property
    def chunks(self) -> list[int]:
        """The chunks this process owns (all of them in a single process)."""
        rank, processes = self.shard
        return list(range(rank, math.ceil(len(self.ids) / self.chunk), processes))

    @property
    def owned_rows(self) -> int:
        return sum(hi - lo for lo, hi in map(self.bounds, self.chunks))

    def bounds(self, c: int) -> tuple[int, int]:
        return c * self.chunk, min((c + 1) * self.chunk, len(self.ids))

    def path(self, c: int) -> Path:
        return self.dir / CHUNK_FILE.format(index=c)

    def reuse(self, log: Callable[[str], None], chunks: list[int] | None = None) -> list[int]:
        """Load every valid cached chunk of `chunks` (None: those this process owns); return the chunks
        still to compute."""
        todo = []
        for c in self.chunks if chunks is None else chunks:
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
        self.saved.append(c)


class _Plan:
    """The extraction plan of this session, said once its first chunk is timed: how many of the images
    still to embed fit the time there is now, and from which chunk the next session resumes."""

    def __init__(self, todo: dict[str, list[int]], extractions: dict[str, _Extraction], processes: int = 1):
        self.todo, self.ext, self.processes = todo, extractions, processes
        self.images = sum(self._rows(split, c) for split, chunks in todo.items() for c in chunks)
        self.said = False

    def _rows(self, split: str, c: int) -> int:
        lo, hi = self.ext[split].bounds(c)
        return hi - lo

    def say(self, run: Run, *, first: tuple[str, int]) -> None:
        """Log the plan once, after the session's `first` chunk timed on a full batch (split, index)."""
        self.said = True
        done = sum(e.computed for e in self.ext.values())
        left = [(split, c) for split, chunks in self.todo.items() for c in chunks]
        left = left[left.index(first) + 1:]
        if not left:
            return
        n_fit = run.budget.how_many_fit(EMBED_IMAGE, [self._rows(s, c) for s, c in left], share=EMBED_SHARE_NAME)
        fits = sum(self._rows(split, c) for split, c in left[:n_fit])
        resume = left[n_fit] if n_fit < len(left) else None
        share = (done + fits) / self.images
        pace = run.budget.pace.get(EMBED_IMAGE, 0.0)
        rows = [("images to embed", f"{self.images} in {len(left) + 1} chunks, {done} done"),
                *([("processes", f"{self.processes}, each embedding the chunks whose index % {self.processes} is "
                                 "its rank: this plan is rank 0's share")] if self.processes > 1 else []),
                ("pace (first chunk)", f"~{1 / pace:.0f} img/s" if pace > 0 else "not measured"),
                ("fit now", f"{share:.0%} ({done + fits} of {self.images} images)"),
                ("time for embeddings", _time_for(run)),
                ("reserve", run.budget.describe_reserves())]
        if resume is not None:
            lo = self.ext[resume[0]].bounds(resume[1])[0]
            rows.append(("the rest", f"{self.images - done - fits} images, from {CHUNK_FILE.format(index=resume[1])} "
                                     f"of {resume[0]} (row {lo}) on: the next session resumes there (same OUTPUT_DIR)"))
        width = max(len(k) for k, _ in rows)
        run.log("embedding plan:\n" + "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows))
        run.record["embedding_plan"] = {"images": self.images, "fit_share": round(share, 4),
                                        "resume_at": None if resume is None else f"{resume[0]} chunk {resume[1]}"}


def _warm_up(model: torch.nn.Module, cfg: Config, device: torch.device) -> None:
    """One untimed call on a batch of zeros: a model's first call selects its kernels and allocates, and
    timed, it would make the measured pace (and what is reserved at it) several times too slow."""
    dtype = _amp(device)
    with torch.inference_mode(), (torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()):
        model(torch.zeros(cfg.BATCH_SIZE, 3, cfg.IMG_SIZE, cfg.IMG_SIZE, device=device))


def _time_for(run: Run) -> str:
    """The time the embeddings may still use: their share (EMBED_SHARE) and what the reserves leave."""
    left = run.budget.training_left()
    share = run.budget.deadlines.get(EMBED_SHARE_NAME, math.inf) - run.budget.clock()
    if not math.isfinite(min(left, share)):
        return "unlimited"
    return f"{max(0.0, min(left, share)):.0f}s (EMBED_SHARE of the time left after the reserve)"


def _run_extraction(ext: _Extraction, todo: list[int], images: HDF5Images, model: torch.nn.Module,
                    cfg: Config, run: Run, plan: _Plan | None = None, hidden: int = 0, *,
                    share: str = EMBED_SHARE_NAME, stop: StopSignal | None = None) -> str | None:
    """Compute the chunks in `todo`, saving each as it completes; a reason string if it stopped early
    (the budget's answer: the embeddings' share of the time, allotted as `share`, is used, or the
    reserves are reached; or a stop signal arrived, `stop`: the chunk in progress is finished first). `images` yields (tensor, row) or None (skipped); `cfg` gives BATCH_SIZE
    and NUM_WORKERS. Full batches time the pace (per image): the `plan` is said after the first
    chunk that had one, and the `hidden` test images of the rerun (TEST_ROWS) are reserved at that
    pace from then on."""
    from ...loaders import default_workers

    device = run.device
    batches: list[range] = []  # ranges, not lists of row numbers: 48 bytes a batch at any split size
    chunk_of: list[int] = []
    for c in todo:
        lo, hi = ext.bounds(c)
        for s in range(lo, hi, cfg.BATCH_SIZE):
            batches.append(range(s, min(s + cfg.BATCH_SIZE, hi)))
            chunk_of.append(c)
    workers = default_workers(device) if cfg.NUM_WORKERS is None else cfg.NUM_WORKERS
    loader = DataLoader(images, batch_sampler=batches, num_workers=workers, collate_fn=collate_skip_none,
                        pin_memory=device.type == "cuda")
    dtype, clock = _amp(device), run.budget.clock
    images_in = Counter()
    for rows, c in zip(batches, chunk_of):
        images_in[c] += len(rows)
    image_s: float | None = None
    current, buf, got, in_chunk = None, None, [], 0
    mark = clock()
    step = max(1, len(batches) // 10)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    it = iter(loader)
    for b, (rows, c) in enumerate(zip(batches, chunk_of)):
        now = clock()
        if c != current:  # a new chunk: start it only if it fits the embedding share of the budget
            if stop:
                return f"signal: {stop.received}"
            reason = run.budget.stop_reason(run.budget.need(EMBED_IMAGE, images_in[c]), share=share)
            if reason:
                return reason
            lo, hi = ext.bounds(c)
            current, buf, got, in_chunk = c, np.full((hi - lo, ext.dim), np.nan, np.float32), [], 0
        elif (reason := run.budget.stop_reason(run.budget.need(EMBED_IMAGE, len(rows)))) is not None:
            return f"{reason} (the chunk in progress is dropped)"
        batch = next(it)
        if b == 0:  # the first batch waited for the loader's workers to start: not the pace of the work
            now = clock()
        in_chunk += len(rows)
        if batch is not None:
            x, index = batch
            x = x.to(device, non_blocking=True)
            with torch.inference_mode(), autocast():
                out = model(x).float().cpu().numpy()
            lo = ext.bounds(c)[0]
            buf[index.numpy() - lo] = out
            got.append(index.numpy())
        chunk_done = b + 1 == len(batches) or chunk_of[b + 1] != c
        if chunk_done:
            ext.save(c, buf, np.concatenate(got) if got else np.empty(0, int))
        if len(rows) == cfg.BATCH_SIZE:  # the pace of full batches: a batch's fixed cost weighs more in a short one
            took = (clock() - now) / len(rows)
            image_s = took if image_s is None else 0.8 * image_s + 0.2 * took  # smoothed: one slow batch is no trend
            run.budget.observe(EMBED_IMAGE, image_s)
            if hidden > 0:
                first = run.budget.reserves.get(HIDDEN_EMBEDDINGS, 0.0) == 0.0
                reserve_hidden_embeddings(run, hidden, cfg.EMBED_SHARE)
                if first:  # the embeddings' share is of the time this new reserve leaves
                    run.budget.allot(EMBED_SHARE_NAME, cfg.EMBED_SHARE)
        if chunk_done and plan is not None and not plan.said and EMBED_IMAGE in run.budget.pace:
            plan.say(run, first=(ext.split, c))
        if (b + 1) % step == 0:
            rate = sum(len(r) for r in batches[:b + 1]) / max(clock() - mark, 1e-9)
            done = ext.cached + ext.computed + (0 if b + 1 == len(batches) or chunk_of[b + 1] != c else in_chunk)
            run.log(f"embeddings: {ext.split} {done}/{ext.owned_rows} images ({rate:.0f} img/s)")
    return None


def embeddings(comp: Competition, cfg: Config, run: Run) -> Embeddings | None:
    """Embeddings of every train and test image from the timm backbone (pooled features), cached.

    The cache folder is named by `embedding_key` (model, size, weights); each chunk of EMBED_CHUNK
    images is one file written atomically and reused only if it holds the same isic_ids. Extraction
    (test first) stops when EMBED_SHARE of the time that was left is spent, or the budget's reserve
    is reached; rows not extracted are NaN and a rerun with the same OUTPUT_DIR continues. A skipped
    image (ON_BAD_IMAGE="skip") is a NaN row too, and is listed in `run.json`. None when IMAGE_PCA=0.

    With several processes (DEVICES) the chunks still to compute are computed by torchrun workers
    (`_in_workers`), and read here from the cache; run.json records `world_size` and `backend` either way.
    """
    if cfg.IMAGE_PCA == 0:
        run.log("IMAGE_PCA=0: no embedding features")
        return None
    world = distributed.plan_world(cfg.DEVICES, device=cfg.DEVICE)
    run.record.update(world_size=world.processes, backend=world.backend)
    weights = _weights(cfg, run)
    key = embedding_key(cfg, weights)
    root = run.dir / EMBED_DIR / key
    measured_before = _pace_before(run, key, cfg)
    test_rows = declare_reserves(run, len(comp.test), cfg)
    if world.distributed:
        result, reason, seconds, image_s = _in_workers(comp, cfg, run, world, root)
    else:
        with run.budget.timed("embeddings"):
            result, reason, seconds = _extract(comp, cfg, run, weights, root, hidden=test_rows - len(comp.test))
        image_s = run.budget.pace.get(EMBED_IMAGE, measured_before)
    return _finish(comp, cfg, run, key, root, result, reason, seconds, image_s)


def _pace_before(run: Run, key: str, cfg: Config) -> float | None:
    """The pace (s/image) an earlier session of this run measured on the same cache and batch, planned
    as this session's estimate; None when there is none."""
    before = (run.previous or {}).get("embeddings") or {}
    if before.get("key") == key and before.get("batch_size") == cfg.BATCH_SIZE and before.get("image_s"):
        run.budget.plan_pace(EMBED_IMAGE, float(before["image_s"]))
        return float(before["image_s"])
    return None


def _split_dir(root: Path, split: str, cfg: Config) -> Path:
    return root / split / f"chunks{cfg.EMBED_CHUNK}"


def _extract(comp: Competition, cfg: Config, run: Run, weights: Weights, root: Path, *, hidden: int,
             shard: tuple[int, int] = (0, 1)) -> tuple[dict[str, _Extraction], str | None, float]:
    """Load the backbone on `run.device`, reuse the valid chunks this process owns (`shard`: its rank,
    the number of processes) and compute the others inside the budget (`_run_extraction`). Returns each
    split's extraction, the reason it stopped early (or None) and the seconds it took."""
    rank, processes = shard
    model = _backbone(cfg, num_classes=0, weights=weights).to(run.device).eval()
    if run.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    mean, std = _mean_std(model)
    _warm_up(model, cfg, run.device)
    transform = ResizeToTensor(cfg.IMG_SIZE, mean=mean, std=std)
    root.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        write_json(root / META_FILE, {"model": cfg.MODEL, "img_size": cfg.IMG_SIZE, "weights": weights.record(),
                                      "seed": cfg.SEED, "dim": int(model.num_features), "mean": mean, "std": std})
    _allot_share(run, cfg)
    result, todo, reason = {}, {}, None
    t0 = run.budget.clock()
    for split in _SPLITS:
        frame = comp.test if split == "test" else comp.train
        directory = _split_dir(root, split, cfg)
        directory.mkdir(parents=True, exist_ok=True)
        result[split] = _Extraction(split, frame["isic_id"].to_numpy(dtype=str), directory, cfg.EMBED_CHUNK,
                                    int(model.num_features), shard)
        todo[split] = result[split].reuse(run.log)
    plan = _Plan(todo, result, processes)
    if plan.images:
        parts = ", ".join(f"{split} {e.owned_rows - e.cached}" for split, e in result.items())
        run.log(f"embeddings: {plan.images} images to embed ({parts}; {sum(e.cached for e in result.values())} "
                f"cached{'' if processes == 1 else ', in the share of rank 0'}); the plan follows once the first "
                "chunk is timed")
    said = lambda name: run.log(f"{name} received: the embeddings stop once the chunk in progress is saved")  # noqa: E731
    with install_sigterm_handler(said) as stop:  # torchrun passes a SIGTERM on to every worker
        for split, ext in result.items():
            if todo[split] and reason is None:
                images = HDF5Images(comp.images[split], ext.ids, transform=transform, on_error=cfg.ON_BAD_IMAGE,
                                    return_index=True)
                reason = _run_extraction(ext, todo[split], images, model, cfg, run, plan,
                                         hidden=math.ceil(hidden / processes), stop=stop)  # shared out in the rerun too
                images.close()
            done = ext.cached + ext.computed
            share = "" if processes == 1 else f" of rank {rank}'s share"
            run.log(f"embeddings: {split} {done}/{ext.owned_rows} images{share} ({ext.cached} from the cache, "
                    f"{ext.computed} computed){'; skipped: ' + ', '.join(ext.skipped[:5]) if ext.skipped else ''}")
    return result, reason, run.budget.clock() - t0


def _allot_share(run: Run, cfg: Config) -> None:
    """Give the extraction EMBED_SHARE of the time left: in several processes, rank 0's share (seconds from
    the budget's start, which `Budget.taken_over` keeps the same in every process) for all, so every rank
    stops at one deadline; each then decides chunk by chunk within it, with no collective until the end."""
    run.budget.allot(EMBED_SHARE_NAME, cfg.EMBED_SHARE)
    if distributed.world_size() > 1:
        ends = distributed.broadcast_object(run.budget.deadlines[EMBED_SHARE_NAME] - run.budget.start)
        run.budget.deadlines[EMBED_SHARE_NAME] = run.budget.start + ends


def _finish(comp: Competition, cfg: Config, run: Run, key: str, root: Path, result: dict[str, _Extraction],
            reason: str | None, seconds: float, image_s: float | None) -> Embeddings:
    """The Embeddings of both splits, recorded in run.json."""
    emb = Embeddings(key=key, train=result["train"].values, test=result["test"].values,
                     skipped=result["test"].skipped + result["train"].skipped, stop_reason=reason or "completed")
    computed = sum(e.computed for e in result.values())
    run.record["embeddings"] = {
        "key": key, "dir": str(root), "train_rows": emb.rows("train"), "test_rows": emb.rows("test"),
        "computed": computed, "cached": sum(e.cached for e in result.values()), "seconds": round(seconds, 1),
        "images_per_s": round(computed / seconds, 1) if computed and seconds > 0 else None,
        "batch_size": cfg.BATCH_SIZE, "image_s": image_s,
        "skipped": emb.skipped[:100], "skipped_count": len(emb.skipped), "stop_reason": emb.stop_reason}
    if reason:
        run.log(f"embeddings stopped ({reason}): {emb.rows('train')}/{len(comp.train)} train and "
                f"{emb.rows('test')}/{len(comp.test)} test rows have one; rerun with the same OUTPUT_DIR to continue")
    run.save()
    return emb


# ----------------------------------------------------------------------------- several processes


def _cached(comp: Competition, cfg: Config, root: Path, log: Callable[[str], None]
            ) -> tuple[dict[str, _Extraction], dict[str, list[int]]] | None:
    """Every split's valid cached chunks, read as a resumed session reads them, and the chunks still to
    compute; None before the cache's first session (no meta.json: the size of an embedding is not known)."""
    try:
        dim = int(json.loads((root / META_FILE).read_text())["dim"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    result, todo = {}, {}
    for split in _SPLITS:
        frame = comp.test if split == "test" else comp.train
        result[split] = _Extraction(split, frame["isic_id"].to_numpy(dtype=str), _split_dir(root, split, cfg),
                                    cfg.EMBED_CHUNK, dim)
        todo[split] = result[split].reuse(log)
    return result, todo


def _in_workers(comp: Competition, cfg: Config, run: Run, world: distributed.World, root: Path
                ) -> tuple[dict[str, _Extraction], str | None, float, float | None]:
    """The chunks still to compute, computed by `world.processes` torchrun workers (`extract_share` in
    each, their output streamed into the cell), then read from the cache here; this process takes back
    the record rank 0 saved in run.json. Returns what `_extract` does, and the slowest rank's pace."""
    found = _cached(comp, cfg, root, run.log)
    if found is not None and not any(found[1].values()):
        run.log("embeddings: every chunk is in the cache, no worker is started")
        return found[0], None, 0.0, run.budget.planned.get(EMBED_IMAGE)
    spec = worker_spec("isic", run, {**cfg.as_dict(), "DATA_DIR": str(comp.data_dir)}, stage="embeddings")
    t0 = run.budget.clock()
    out = run_workers(spec, run, world)  # rank 0 recorded the weights, the plan and the phases it timed
    seconds = run.budget.clock() - t0
    ranks = out["ranks"]
    if found is None:  # the workers wrote meta.json
        found = _cached(comp, cfg, root, lambda message: None)
        if found is None:
            raise RuntimeError(f"the embedding workers finished without writing {root / META_FILE}.")
    else:  # only the chunks the workers were to compute are new
        found[1].update({split: ext.reuse(lambda message: None, found[1][split]) for split, ext in found[0].items()})
    result, todo = found
    for split, ext in result.items():  # what the workers computed, not what this process read
        ext.computed = sum(r["computed"][split] for r in ranks)
        ext.cached -= ext.computed
    reasons = [r["stop_reason"] for r in ranks if r["stop_reason"]]
    left = sum(map(len, todo.values()))
    reason = reasons[0] if reasons else (f"{left} chunks were not computed by the workers" if left else None)
    paces = [r["image_s"] for r in ranks if r.get("image_s")]
    run.log(f"embeddings: the {world.processes} processes computed "
            + ", ".join(f"rank {r['rank']} {sum(r['computed'].values())} images" for r in ranks))
    return result, reason, seconds, max(paces) if paces else None


def extract_share(comp: Competition, cfg: Config, run: Run) -> dict[str, Any]:
    """One process of a sharded extraction (in a torchrun worker: `pipeline.train_worker`): this rank's
    chunks still to compute, inside the same budget and share as every other rank. Rank 0 saves run.json.
    Returns the chunks it computed, by split, their rows, its pace and why it stopped early (or None)."""
    with distributed.main_first():  # rank 0 finds (or fetches) the weights first
        weights = _weights(cfg, run)
    key = embedding_key(cfg, weights)
    measured_before = _pace_before(run, key, cfg)
    test_rows = declare_reserves(run, len(comp.test), cfg)
    with run.budget.timed("embeddings"):
        result, reason, _ = _extract(comp, cfg, run, weights, run.dir / EMBED_DIR / key,
                                     hidden=test_rows - len(comp.test),
                                     shard=(distributed.rank(), distributed.world_size()))
    run.save()
    return {"rank": distributed.rank(), "chunks": {split: e.saved for split, e in result.items()},
            "computed": {split: e.computed for split, e in result.items()},
            "image_s": run.budget.pace.get(EMBED_IMAGE, measured_before), "stop_reason": reason}
