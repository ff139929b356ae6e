"""Embedding extraction from ISIC HDF5 images: the kit's pipeline vs a naive per-item loader.

Both feed the same timm model (random weights, embeddings only) with the same images:

    kit    HDF5Images (file opened once per worker, cv2 decode, cv2 resize) + DataLoader workers
    naive  per item: open the HDF5 file, read, PIL decode, PIL resize, to tensor; batches by stacking

Also measured: pure JPEG decode (cv2 vs PIL on the same bytes), the data side alone, and the peak
memory of the kit pipeline for 1x and 4x the image count (each in a fresh process), next to an
eager loader that holds every decoded image. The last line is `ratio X` = kit / naive images/s.

    python benchmarks/isic_decode.py [--images 2000] [--size 64] [--model resnet18] [--repeats 3]
"""
from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MIB = 1024 * 1024


def build_model(name: str) -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=0).eval()


def kit_batches(path: Path, ids, size: int, batch_size: int, workers: int):
    """The kit's pipeline: one lazily opened handle per worker, cv2 decode and resize."""
    from torch.utils.data import DataLoader

    from kagglekit_nb.tasks.isic import HDF5Images, ResizeToTensor

    images = HDF5Images(path, ids, transform=ResizeToTensor(size), decoder="cv2")
    yield from DataLoader(images, batch_size=batch_size, num_workers=workers)


def naive_batches(path: Path, ids, size: int, batch_size: int, workers: int):
    """What a first notebook does: open the file per item, PIL decode and resize, stack."""
    import h5py
    from PIL import Image

    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    for start in range(0, len(ids), batch_size):
        tensors = []
        for isic_id in ids[start:start + batch_size]:
            with h5py.File(path, "r") as f:
                raw = f[isic_id][()]
            image = Image.open(io.BytesIO(raw)).convert("RGB").resize((size, size), Image.BILINEAR)
            pixels = (np.asarray(image, np.float32) / 255.0 - mean) / std
            tensors.append(torch.from_numpy(pixels.transpose(2, 0, 1).copy()))
        yield torch.stack(tensors)


def embed(batches, model: torch.nn.Module | None, n: int, split: dict | None = None) -> np.ndarray:
    """Run `model` over the batches into a preallocated (n, dim) array; model None = data side only.

    `split`, when given, collects the seconds spent waiting for batches ("data") and in the model.
    """
    out = None
    row = 0
    waited = modelled = 0.0
    with torch.inference_mode():
        batches = iter(batches)
        while True:
            start = time.perf_counter()
            x = next(batches, None)
            got = time.perf_counter()
            waited += got - start
            if x is None:
                break
            if model is not None:
                y = model(x).numpy()
                if out is None:
                    out = np.empty((n, y.shape[1]), np.float32)
                out[row:row + len(y)] = y
            modelled += time.perf_counter() - got
            row += len(x)
    assert row == n, (row, n)
    if split is not None:
        split.setdefault("data", []).append(waited)
        split.setdefault("model", []).append(modelled)
    return out


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def decode_throughput(path: Path, ids, repeats: int) -> tuple[float, float]:
    """Images/s of cv2 and PIL decoding the same JPEG bytes, held in memory."""
    import cv2
    import h5py
    from PIL import Image

    with h5py.File(path, "r") as f:
        raws = [bytes(f[i][()]) for i in ids]

    def with_cv2():
        for raw in raws:
            cv2.cvtColor(cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    def with_pil():
        for raw in raws:
            np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))

    times = {"cv2": [], "pil": []}
    for _ in range(repeats):
        times["cv2"].append(timed(with_cv2))
        times["pil"].append(timed(with_pil))
    return len(raws) / statistics.median(times["cv2"]), len(raws) / statistics.median(times["pil"])


def memory_run(path: Path, count: int, eager: bool, args: argparse.Namespace) -> dict:
    """Peak RSS (MiB) of this process and of its largest worker after embedding `count` images."""
    import h5py

    with h5py.File(path, "r") as f:
        ids = sorted(f.keys())
    ids = [ids[i % len(ids)] for i in range(count)]  # more images than stored: repeat the ids
    model = build_model(args.model)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if eager:  # every decoded image held in a list, then embedded
        from kagglekit_nb.tasks.isic import HDF5Images

        images = HDF5Images(path, ids)
        held = [images[i] for i in range(len(images))]
        embedded = None
        del held
    else:
        embedded = embed(kit_batches(path, ids, args.size, args.batch_size, args.workers), model, count)
    return {
        "start": base,
        "main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "output": 0.0 if embedded is None else embedded.nbytes / MIB,
    }


def measure_memory(path: Path, count: int, eager: bool, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--memory-run", str(path), str(count), "--model", args.model,
               "--size", str(args.size), "--batch-size", str(args.batch_size), "--workers", str(args.workers)]
    if eager:
        command.append("--eager")
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64, help="model input, pixels")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-run", nargs=2, metavar=("HDF5", "COUNT"), help=argparse.SUPPRESS)
    parser.add_argument("--eager", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_run:
        print(json.dumps(memory_run(Path(args.memory_run[0]), int(args.memory_run[1]), args.eager, args)))
        return

    from kagglekit_nb.demo.isic import make_isic_demo

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        data = make_isic_demo(Path(tmp) / "isic", seed=0, n_train=args.images, n_test=20)
        path = data / "train-image.hdf5"
        import h5py

        with h5py.File(path, "r") as f:
            ids = sorted(f.keys())
        print(f"{len(ids)} demo JPEGs (100-200 px) in one HDF5 file, written in {time.perf_counter() - start:.1f} s; "
              f"{args.model} (random weights, embeddings) at {args.size} px, batch {args.batch_size}, "
              f"{args.workers} workers, {torch.get_num_threads()} torch threads")

        cv2_rate, pil_rate = decode_throughput(path, ids, args.repeats)
        print(f"pure JPEG decode, same bytes in memory: cv2 {cv2_rate:,.0f} img/s, PIL {pil_rate:,.0f} img/s "
              f"(cv2/PIL {cv2_rate / pil_rate:.2f}x)")

        model = build_model(args.model)
        pipelines = {"kit": kit_batches, "naive": naive_batches}
        rates = {}
        for label, use_model in (("data side only (read, decode, resize, tensors)", None),
                                 ("embedding extraction", model)):
            times = {name: [] for name in pipelines}
            splits = {name: {} for name in pipelines}
            for _ in range(args.repeats):  # alternate, so drift hits both alike
                for name, batches in pipelines.items():
                    it = batches(path, ids, args.size, args.batch_size, args.workers)
                    split = splits[name]
                    times[name].append(timed(lambda it=it, m=use_model, sp=split: embed(it, m, len(ids), sp)))
            rates = {name: len(ids) / statistics.median(t) for name, t in times.items()}
            best = {name: len(ids) / min(t) for name, t in times.items()}
            print(f"{label}, median of {args.repeats}: kit {rates['kit']:,.0f} img/s, "
                  f"naive {rates['naive']:,.0f} img/s ({rates['kit'] / rates['naive']:.2f}x); "
                  f"best: kit {best['kit']:,.0f}, naive {best['naive']:,.0f} ({best['kit'] / best['naive']:.2f}x)")
        median = {name: {k: statistics.median(v) for k, v in split.items()} for name, split in splits.items()}
        print("  where the embedding time went (median s per run): " + "; ".join(
            f"{name}: waiting for batches {m['data']:.2f}, in the model {m['model']:.2f}" for name, m in median.items()))

        kit_emb = embed(kit_batches(path, ids[:256], args.size, args.batch_size, args.workers), model, 256)
        naive_emb = embed(naive_batches(path, ids[:256], args.size, args.batch_size, args.workers), model, 256)
        cosine = (kit_emb * naive_emb).sum(1) / np.linalg.norm(kit_emb, axis=1) / np.linalg.norm(naive_emb, axis=1)
        print(f"same embeddings either way (cv2 INTER_AREA vs PIL bilinear resize): cosine min {cosine.min():.4f}")

        for eager in (False, True):
            one = measure_memory(path, len(ids), eager, args)
            four = measure_memory(path, 4 * len(ids), eager, args)
            if eager:
                print(f"peak RSS, eager baseline (all decoded images held): {len(ids)} images {one['main']:.0f} MiB, "
                      f"{4 * len(ids)} images {four['main']:.0f} MiB (+{four['main'] - one['main']:.0f} MiB)")
            else:
                print(f"peak RSS, kit pipeline: {len(ids)} images main {one['main']:.0f} MiB / worker "
                      f"{one['worker']:.0f} MiB; {4 * len(ids)} images main {four['main']:.0f} MiB / worker "
                      f"{four['worker']:.0f} MiB (+{four['main'] - one['main']:.0f} / "
                      f"+{four['worker'] - one['worker']:.0f} MiB; the embeddings themselves: "
                      f"{one['output']:.1f} / {four['output']:.1f} MiB)")
    print(f"ratio {rates['kit'] / rates['naive']:.3f}")


if __name__ == "__main__":
    main()
