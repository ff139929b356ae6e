"""How each stage of the kit grows with the data: every stage at 1x, 4x and 16x a base size, each
measurement in a fresh process, through the kit's own functions on generated data in the real layouts.

    python benchmarks/scale.py [--quick] [--isic-rows 401059] [--retries 2] [--only STAGE ...]

| stage | the kit's call | what grows (N at 1x, 4x, 16x) |
|---|---|---|
| classification read | `tasks.competition.read` | train.csv + N 8x8 PNGs, N/4 in test/, the sample |
| classification read folders | `tasks.competition.read` | N PNGs in a folder per class (N/100 classes), N/4 in test/ |
| isic load | `tasks.isic.pipeline.load` | train-metadata.csv of N rows (55 columns), test N/4, the early baseline |
| isic features | `tasks.isic.features.features` | those rows: tabular, engineered, patient-normalised features |
| isic image features | `tasks.isic.features.features` | the same plus made-up 512-d embeddings of every row, PCA to 32 |
| isic embeddings | `tasks.isic.embeddings.embeddings` | 1,024 images out of HDF5 files of N + N/4 tiny JPEGs |
| isic embeddings resume | `tasks.isic.embeddings.embeddings` | N + N/4 rows, all cached but 1,024 train images |
| lightgbm | `tasks.isic.lgbm.train_lgbm` | the N rows' features: 2 folds x 1 seed x 50 rounds |
| glacier load | `tasks.glacier.pretrain.load` | N HKH patches of 128 px (the images hard links to one file) |
| glacier crops | `tasks.glacier.data.CropDataset` | built over the N patches, then 256 crops of 64 px drawn |
| submission write | `submission.write_csv` | R rows of isic_id,target (R = 500,000 at 16x) |
| verify | `verification.verify` | those R rows against a sample of R rows |

The embeddings come from `test_resnet` (random weights) at 32 px. Memory is the peak resident set
(RSS) of the measuring process during the stage minus its RSS when the stage started (the C heap's
free pages handed back first, so that memory reused from the setup counts; the peak reset through
/proc/self/clear_refs), so numpy, pandas, torch, HDF5 and LightGBM allocations all count (tracemalloc
would see only the Python and numpy ones). A stage's own data (a frame of N rows, an (N, dim) array
of embeddings) grows with N by nature; what must stay flat is the rest. `--isic-rows N` puts the ISIC
stages' largest size at N rows (401,059: the real training set) and their base at N / 16.

Each size runs once in a fresh process; the two sizes of a step that grows faster than 4.4x run
again (`--retries` times at most, the fastest run kept), since a busy machine slows single runs.
Each line gives time and memory per size, the growth per 4x and the runs per size; the last line is
`worst time ratio per 4x: X (stage)` (linear growth is 4).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCALES = (1, 4, 16)
ISIC_ROWS = 100_000           # the ISIC stages' 16x size (N); --isic-rows changes it
EMBED_IMAGES = 1024           # images the embedding stages compute, whatever the file holds
EMBED_CHUNK = 256
GLACIER_PATCH = 128           # pixels per side of a generated HKH patch
GLACIER_CROP, GLACIER_DRAWS = 64, 256
LGBM_ROUNDS = 50
LINEAR = 4.4                  # time growth per 4x above which a step is taken for more than linear
# stage -> (what its size counts, its 1x size (None: the ISIC rows / 16), the data it reads)
STAGES: dict[str, tuple[str, int | None, str]] = {
    "classification read": ("images", 2_000, "classification"),
    "classification read folders": ("images", 1_000, "class_folders"),
    "isic load": ("rows", None, "isic"),
    "isic features": ("rows", None, "isic"),
    "isic image features": ("rows", None, "isic"),
    "isic embeddings": ("rows", None, "isic"),
    "isic embeddings resume": ("rows", None, "isic"),
    "lightgbm": ("rows", None, "isic"),
    "glacier load": ("patches", 100, "glacier"),
    "glacier crops": ("patches", 100, "glacier"),
    "submission write": ("rows", 31_250, "sample"),
    "verify": ("rows", 31_250, "sample"),
}


# ------------------------------------------------------------------------------------ memory


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # 5: reset the peak resident set size (VmHWM) to the current one


def _release_free_memory() -> None:
    """Give the C heap's free pages back to the system, so that memory the stage reuses from its
    setup counts as growth too (glibc; elsewhere nothing happens)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure(fn: Callable[[], object]) -> dict[str, float]:
    """Seconds and peak RSS growth (MiB) of `fn()`."""
    import gc

    gc.collect()
    _release_free_memory()
    _reset_peak()
    start_kib = _status_kib("VmRSS")
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rss_mib": max(0, _status_kib("VmHWM") - start_kib) / 1024}


# -------------------------------------------------------------------------------- generation


def _png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(buf, "PNG")
    return buf.getvalue()


def make_classification(out: Path, n: int) -> Path:
    """A Kaggle image competition: train.csv (id,label), train/<id>.png, test/<id>.png, the sample."""
    import pandas as pd

    png = _png_bytes()
    rng = np.random.default_rng(0)
    n_test = max(1, n // 4)
    ids = [f"img_{i:07d}" for i in range(n)]
    test_ids = [f"tst_{i:07d}" for i in range(n_test)]
    classes = np.array([f"class_{c}" for c in range(10)])
    for folder, names in (("train", ids), ("test", test_ids)):
        (out / folder).mkdir(parents=True)
        for name in names:
            (out / folder / f"{name}.png").write_bytes(png)
    pd.DataFrame({"id": ids, "label": classes[rng.integers(0, 10, n)]}).to_csv(out / "train.csv", index=False)
    pd.DataFrame({"id": test_ids, "label": "class_0"}).to_csv(out / "sample_submission.csv", index=False)
    return out


def make_class_folders(out: Path, n: int) -> Path:
    """An image competition without a labels CSV: train/<class>/<id>.png (n / 100 classes), test/<id>.png."""
    import pandas as pd

    png = _png_bytes()
    n_classes, n_test = max(2, n // 100), max(1, n // 4)
    for i in range(n):
        folder = out / "train" / f"class_{i % n_classes:05d}"
        if i < n_classes:
            folder.mkdir(parents=True)
        (folder / f"img_{i:07d}.png").write_bytes(png)
    test_ids = [f"tst_{i:07d}" for i in range(n_test)]
    (out / "test").mkdir()
    for name in test_ids:
        (out / "test" / f"{name}.png").write_bytes(png)
    pd.DataFrame({"id": test_ids, "label": "class_00000"}).to_csv(out / "sample_submission.csv", index=False)
    return out


def _tiny_jpegs(count: int = 8) -> list[np.void]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        out.append(np.void(buf.getvalue()))
    return out


def make_isic(out: Path, n: int, base: Path, *, n_test: int | None = None) -> Path:
    """The ISIC 2024 layout at n train rows (`n_test` test rows, default n/4 and at least 20): the demo's
    metadata repeated with new lesion and patient ids, one tiny JPEG per isic_id in each HDF5 file."""
    import h5py
    import pandas as pd

    from kagglekit_nb.tasks.isic.data import SAMPLE_FILE, TEST_FILE, TEST_IMAGES, TRAIN_FILE, TRAIN_IMAGES

    out.mkdir(parents=True)
    jpegs = _tiny_jpegs()
    offset = 0
    n_test = max(20, n // 4) if n_test is None else n_test
    for file, images, rows in ((TRAIN_FILE, TRAIN_IMAGES, n), (TEST_FILE, TEST_IMAGES, n_test)):
        source = pd.read_csv(base / file, dtype={"isic_id": str, "patient_id": str}, low_memory=False)
        copy = np.arange(rows) // len(source)
        frame = source.iloc[np.arange(rows) % len(source)].reset_index(drop=True)
        frame["isic_id"] = [f"ISIC_{offset + i:07d}" for i in range(rows)]
        frame["patient_id"] = frame["patient_id"] + pd.Series(copy).map("_{:04d}".format)
        offset += rows
        frame.to_csv(out / file, index=False)
        with h5py.File(out / images, "w") as f:
            for i, isic_id in enumerate(frame["isic_id"]):
                f.create_dataset(isic_id, data=jpegs[i % len(jpegs)])
        if file == TEST_FILE:
            pd.DataFrame({"isic_id": frame["isic_id"], "target": 0.3}).to_csv(out / SAMPLE_FILE, index=False)
    return out


def make_glacier(out: Path, n: int, *, size: int = GLACIER_PATCH) -> Path:
    """n HKH patches of `size` px (`*_img_NNN.npy` HWC float32 15 channels + `*_mask_NNN.npy` HW2 uint8),
    8 per scene; the images are hard links to one file."""
    rng = np.random.default_rng(0)
    out.mkdir(parents=True)
    image = out / "image.npy"
    np.save(image, rng.random((size, size, 15), dtype=np.float32))
    for i in range(n):
        stem = f"slice_{i // 8:05d}"
        mask = np.zeros((size, size, 2), np.uint8)
        for channel in (0, 0, 1):  # two ice blobs and one debris blob, each somewhere else
            y, x = rng.integers(0, size, 2)
            h, w = rng.integers(size // 16, size // 3, 2)
            mask[y:y + h, x:x + w, channel] = 1
        mask[..., 0] &= 1 - mask[..., 1]
        os.link(image, out / f"{stem}_img_{i % 8:03d}.npy")
        np.save(out / f"{stem}_mask_{i % 8:03d}.npy", mask)
    image.unlink()
    return out


def make_sample(out: Path, rows: int) -> Path:
    import pandas as pd

    out.mkdir(parents=True)
    pd.DataFrame({"isic_id": [f"ISIC_{i:07d}" for i in range(rows)], "target": 0.3}).to_csv(
        out / "sample_submission.csv", index=False)
    return out


# -------------------------------------------------------------------------------- the stages
# Each returns the call to measure; what it does before returning is setup, not measured.


def _run(cfg, work: Path):
    from kagglekit_nb.run import start_run

    return start_run(cfg.as_dict(), run_name=cfg.RUN_NAME, output_dir=work / "run", budget=None, seed=cfg.SEED,
                     device="cpu", echo=lambda _m: None)


def _isic_cfg(data: Path):
    from kagglekit_nb.tasks.isic import pipeline

    return pipeline.Config(DATA_DIR=str(data), MODEL="test_resnet", WEIGHTS=None, IMG_SIZE=32, BATCH_SIZE=128,
                           EMBED_CHUNK=EMBED_CHUNK, EMBED_SHARE=1.0, NUM_WORKERS=0, FOLDS=2, LGBM_SEEDS=1,
                           MAX_ROUNDS=LGBM_ROUNDS, EARLY_STOPPING=LGBM_ROUNDS, SEED=0)


def stage_classification_read(data: Path, work: Path) -> Callable[[], object]:
    from kagglekit_nb.tasks.competition import Overrides, read

    def call():
        comp = read(data, Overrides(), scratch=work / "scratch", log=lambda _m: None)
        assert len(comp.train) and all(comp.train["path"].str.endswith(".png"))
    return call


def stage_isic_load(data: Path, work: Path) -> Callable[[], object]:
    from kagglekit_nb.tasks.isic import pipeline

    cfg = _isic_cfg(data)
    run = _run(cfg, work)
    return lambda: pipeline.load(cfg, run)


def stage_isic_features(data: Path, work: Path) -> Callable[[], object]:
    from kagglekit_nb.tasks.isic import features, pipeline

    cfg = _isic_cfg(data)
    run = _run(cfg, work)
    comp = pipeline.load(cfg, run)
    return lambda: features.features(comp, None, None, cfg, run)


def stage_isic_image_features(data: Path, work: Path) -> Callable[[], object]:
    from kagglekit_nb.tasks.isic import features, pipeline
    from kagglekit_nb.tasks.isic.embeddings import Embeddings

    cfg = _isic_cfg(data)
    run = _run(cfg, work)
    comp = pipeline.load(cfg, run)
    rng = np.random.default_rng(0)
    emb = Embeddings(key="made-up", train=rng.standard_normal((len(comp.train), 512), dtype=np.float32),
                     test=rng.standard_normal((len(comp.test), 512), dtype=np.float32))

    def call():
        feats = features.features(comp, emb, None, cfg, run)
        assert len(feats.columns["image"]) == cfg.IMAGE_PCA
    return call


def _spread(frame, count: int):
    """`count` rows spread evenly over `frame` (so their images lie all over the HDF5 file)."""
    rows = np.linspace(0, len(frame) - 1, min(count, len(frame))).astype(int)
    return frame.iloc[rows].reset_index(drop=True)


def stage_isic_embeddings(data: Path, work: Path) -> Callable[[], object]:
    import dataclasses

    from kagglekit_nb.tasks.isic import embeddings, pipeline

    cfg = _isic_cfg(data)
    run = _run(cfg, work)
    comp = pipeline.load(cfg, run)
    comp = dataclasses.replace(comp, train=_spread(comp.train, EMBED_IMAGES * 4 // 5),
                               test=_spread(comp.test, EMBED_IMAGES // 5))

    def call():
        emb = embeddings.embeddings(comp, cfg, run)
        assert emb.complete and run.record["embeddings"]["computed"] == len(comp.train) + len(comp.test)
    return call


def stage_isic_embeddings_resume(data: Path, work: Path) -> Callable[[], object]:
    """Every chunk of both splits cached (values made up) except those of the last EMBED_IMAGES train rows."""
    from kagglekit_nb.tasks.isic import embeddings as E
    from kagglekit_nb.tasks.isic import pipeline

    cfg = _isic_cfg(data)
    run = _run(cfg, work)
    comp = pipeline.load(cfg, run)
    root = run.dir / E.EMBED_DIR / E.embedding_key(cfg)
    dim = int(E._backbone(cfg, num_classes=0).num_features)
    rng = np.random.default_rng(0)
    cached = 0
    for split, frame in (("test", comp.test), ("train", comp.train)):
        ids = frame["isic_id"].to_numpy(dtype=str)
        directory = root / split / f"chunks{cfg.EMBED_CHUNK}"
        directory.mkdir(parents=True)
        ext = E._Extraction(split, ids, directory, cfg.EMBED_CHUNK, dim)
        keep = len(ids) if split == "test" else max(0, len(ids) - EMBED_IMAGES)
        for c in range(keep // cfg.EMBED_CHUNK):
            lo, hi = ext.bounds(c)
            ext.save(c, rng.standard_normal((hi - lo, dim), dtype=np.float32), np.arange(lo, hi))
            cached += hi - lo

    def call():
        emb = E.embeddings(comp, cfg, run)
        assert emb.complete and run.record["embeddings"]["cached"] == cached
    return call


def stage_lightgbm(data: Path, work: Path) -> Callable[[], object]:
    from kagglekit_nb.tasks.isic import features, lgbm, pipeline

    cfg = _isic_cfg(data)
    run = _run(cfg, work)
    comp = pipeline.load(cfg, run)
    folds = pipeline.make_folds(comp, cfg, run)
    feats = features.features(comp, None, None, cfg, run)

    def call():
        result = lgbm.train_lgbm(feats, folds, cfg, run)
        assert result.models["tabular"].seeds_done == 1
    return call


def _glacier_cfg(data: Path):
    from kagglekit_nb.tasks.glacier import pretrain

    return pretrain.Config(DATA_DIR=str(data), MAX_PATCHES=None, FOLDS=2, SEED=0)


def stage_glacier_load(data: Path, work: Path) -> Callable[[], object]:
    from kagglekit_nb.tasks.glacier import pretrain

    cfg = _glacier_cfg(data)
    run = _run(cfg, work)
    return lambda: pretrain.load(cfg, run)


def stage_glacier_crops(data: Path, work: Path) -> Callable[[], object]:
    from kagglekit_nb.tasks.glacier import BandStats, pretrain
    from kagglekit_nb.tasks.glacier.data import CropDataset

    cfg = _glacier_cfg(data)
    run = _run(cfg, work)
    tiles = pretrain.load(cfg, run)
    stats = BandStats.fit([tiles.read(0)], tiles.bands)

    def call():
        np.random.seed(0)
        crops = CropDataset(tiles, range(len(tiles)), stats, GLACIER_CROP, GLACIER_DRAWS, power=1.0)
        for i in range(len(crops)):
            x, y = crops[i]
        assert x.shape == (len(tiles.bands), GLACIER_CROP, GLACIER_CROP)
    return call


def _predictions(data: Path):
    import pandas as pd

    sample = pd.read_csv(data / "sample_submission.csv", dtype=str)
    target = np.random.default_rng(0).random(len(sample))
    return pd.DataFrame({"isic_id": sample["isic_id"], "target": target})


def stage_submission_write(data: Path, work: Path) -> Callable[[], object]:
    from kagglekit_nb.submission import write_csv

    sub = _predictions(data)
    work.mkdir(parents=True, exist_ok=True)
    return lambda: write_csv(sub, work / "submission.csv")


def stage_verify(data: Path, work: Path) -> Callable[[], object]:
    from kagglekit_nb.submission import write_csv
    from kagglekit_nb.verification import verify

    work.mkdir(parents=True, exist_ok=True)
    path = write_csv(_predictions(data), work / "submission.csv")

    def call():
        report = verify(path, data / "sample_submission.csv")
        assert report.valid, report.errors
    return call


stage_classification_read_folders = stage_classification_read
MAKERS = {"classification": make_classification, "class_folders": make_class_folders, "glacier": make_glacier,
          "sample": make_sample}

SETUPS = {name: globals()["stage_" + name.replace(" ", "_")] for name in STAGES}


def child(stage: str, data: Path, work: Path) -> None:
    import warnings

    warnings.simplefilter("ignore")  # random weights, tiny images: said once in the header instead
    call = SETUPS[stage](data, work)
    print(json.dumps(measure(call)))


# -------------------------------------------------------------------------------- the driver


class Data:
    """Each stage's generated data, made once per size in a scratch folder."""

    def __init__(self, root: Path, isic_rows: int):
        self.root, self.isic_rows, self.made = root, isic_rows, {}
        self._isic_base: Path | None = None

    def size(self, stage: str, scale: int) -> int:
        base = STAGES[stage][1]
        return base * scale if base is not None else round(self.isic_rows * scale / SCALES[-1])

    def isic_base(self) -> Path:
        if self._isic_base is None:
            from kagglekit_nb.demo.isic import make_isic_demo

            self._isic_base = make_isic_demo(self.root / "isic_base", seed=0, n_train=400, n_test=100)
        return self._isic_base

    def folder(self, stage: str, scale: int) -> Path:
        n, kind = self.size(stage, scale), STAGES[stage][2]
        if (kind, n) not in self.made:
            out = self.root / f"{kind}_{n}"
            t0 = time.perf_counter()
            if kind == "isic":
                make_isic(out, n, self.isic_base())
            else:
                MAKERS[kind](out, n)
            print(f"  (generated {kind} data of {n:,} {STAGES[stage][0]} in {time.perf_counter() - t0:.1f} s)",
                  flush=True)
            self.made[(kind, n)] = out
        return self.made[(kind, n)]


def run_child(stage: str, data: Path, work: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, __file__, "--child", stage, str(data), str(work)], capture_output=True,
                          text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"stage {stage!r} on {data} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ratios(values: list[float]) -> list[float]:
    return [b / a if a > 0 else float("inf") for a, b in zip(values, values[1:])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1x and 4x only")
    parser.add_argument("--isic-rows", type=int, default=ISIC_ROWS, help="the ISIC stages' 16x size in rows")
    parser.add_argument("--retries", type=int, default=2,
                        help=f"times the two sizes of a step above {LINEAR} per 4x are measured again (fastest kept)")
    parser.add_argument("--only", nargs="+", choices=list(STAGES), metavar="STAGE", help="these stages only")
    parser.add_argument("--child", nargs=3, metavar=("STAGE", "DATA", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return 0
    if args.retries < 0:
        parser.error(f"--retries {args.retries}: use 0 or more")
    if args.isic_rows < 1600:
        parser.error(f"--isic-rows {args.isic_rows}: use at least 1600 (the 1x size is a sixteenth of it)")
    scales = SCALES[:2] if args.quick else SCALES
    stages = args.only or list(STAGES)
    largest = round(args.isic_rows * scales[-1] / SCALES[-1])
    print(f"sizes {', '.join(f'{s}x' for s in scales)}; ISIC stages up to {largest:,} rows; "
          f"{os.cpu_count()} CPUs; each run in a fresh process; memory = peak RSS growth during the stage (MiB), "
          f"the largest of the runs; sizes of a step above {LINEAR} per 4x run again (up to {args.retries} more "
          "times, the fastest kept; runs per size in the last column)")
    worst = (0.0, "")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kk_scale_") as tmp:
        data = Data(Path(tmp), args.isic_rows)
        print(f"{'stage':<28}" + "  ".join(f"{f'{s}x size':>10} {'s':>7} {'MiB':>7}" for s in scales)
              + f"  {'time/4x':>13} {'mem/4x':>13}  {'runs':>5}")
        for stage in stages:
            sizes = [data.size(stage, scale) for scale in scales]
            runs: list[list[dict[str, float]]] = [[] for _ in scales]

            def measure_size(i: int, stage: str = stage) -> None:
                work = Path(tmp) / "work" / f"{stage.replace(' ', '_')}_{scales[i]}_{len(runs[i])}"
                runs[i].append(run_child(stage, data.folder(stage, scales[i]), work))

            for i in range(len(scales)):
                measure_size(i)
            for _ in range(args.retries):  # a step above linear: both of its sizes once more (load noise)
                times = [min(r["seconds"] for r in size_runs) for size_runs in runs]
                steep = sorted({j for k, x in enumerate(_ratios(times)) if x > LINEAR for j in (k, k + 1)})
                for i in steep:
                    measure_size(i)
            times = [min(r["seconds"] for r in size_runs) for size_runs in runs]
            mems = [max(r["rss_mib"] for r in size_runs) for size_runs in runs]
            t_ratio, m_ratio = _ratios(times), _ratios([max(m, 1.0) for m in mems])  # below 1 MiB is noise
            if max(t_ratio) > worst[0]:
                worst = (max(t_ratio), stage)
            cells = "  ".join(f"{n:>10,} {t:>7.2f} {m:>7.1f}" for n, t, m in zip(sizes, times, mems))
            print(f"{stage:<28}{cells}  {' '.join(f'{x:6.2f}' for x in t_ratio):>13} "
                  f"{' '.join(f'{x:6.2f}' for x in m_ratio):>13}  {'/'.join(str(len(r)) for r in runs):>5}",
                  flush=True)
    print(f"(whole script {time.perf_counter() - t_start:.0f} s)")
    print(f"worst time ratio per 4x: {worst[0]:.2f} ({worst[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
