"""Peak memory of the glacier pretrain at the HKH dataset's size: ~14,000 patches against the 500 the
notebook uses by default, everything else the same.

    python benchmarks/glacier_patches.py [--patches 500 14000] [--size 64] [--steps 4]

Each size runs in a fresh process through the notebook's own calls (`load`, `make_folds`, `train`,
`predict`, `write_submission`) on generated patches (`scale.make_glacier`: 15-channel float32 images,
hard links to one file, and a mask each) with MAX_PATCHES=None and a fixed few training steps, so
what grows is only what depends on the number of patches: the file lists, the folds, the band
statistics, the crop sampler's class counts, the validation set. Memory is the process's peak
resident set (VmHWM), whole and as growth over the process after its imports. The last line is
`ratio X`: the peak at the largest size over the peak at the smallest (the target is at most 2).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def child(data: Path, out: Path, size: int, steps: int) -> None:
    import warnings

    warnings.simplefilter("ignore")
    import torch  # noqa: F401  (imported before the baseline reading, as the notebook has it)

    from scale import _status_kib

    from kagglekit_nb.tasks.glacier import pretrain

    base_kib = _status_kib("VmRSS")
    t0 = time.perf_counter()
    cfg = pretrain.Config(DATA_DIR=str(data), OUTPUT_DIR=str(out), MAX_PATCHES=None, ENCODER="resnet18", WEIGHTS=None,
                          CROP=size, BATCH_SIZE=4, SAMPLES_PER_EPOCH=4 * steps, EPOCHS=1, MIN_EPOCHS=1, FOLDS=5,
                          NUM_WORKERS=0, DEVICE="cpu", SEED=0)
    run = pretrain.start(cfg, echo=lambda _m: None)
    tiles = pretrain.load(cfg, run)
    folds = pretrain.make_folds(tiles, cfg, run)
    models = pretrain.train(tiles, folds, cfg, run)
    path = pretrain.write_submission(tiles, pretrain.predict(tiles, models, cfg, run), cfg, run)
    assert path is not None and path.is_file(), "the pretrain wrote no weights"
    print(json.dumps({"patches": len(tiles), "seconds": time.perf_counter() - t0,
                      "peak_mib": _status_kib("VmHWM") / 1024, "growth_mib": (_status_kib("VmHWM") - base_kib) / 1024,
                      "phases": run.budget.phases}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, nargs="+", default=[500, 14_000])
    parser.add_argument("--size", type=int, default=64, help="patch side in pixels (the real patches are 512)")
    parser.add_argument("--steps", type=int, default=4, help="training steps of batch 4")
    parser.add_argument("--child", nargs=2, metavar=("DATA", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), args.size, args.steps)
        return 0
    from scale import make_glacier

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    results = []
    with tempfile.TemporaryDirectory(prefix="kk_glacier_patches_") as tmp:
        for n in args.patches:
            t0 = time.perf_counter()
            data = make_glacier(Path(tmp) / f"data_{n}", n, size=args.size)
            made = time.perf_counter() - t0
            done = subprocess.run([sys.executable, __file__, "--size", str(args.size), "--steps", str(args.steps),
                                   "--child", str(data), str(Path(tmp) / f"run_{n}")],
                                  capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise RuntimeError(f"the run on {n} patches failed:\n{done.stdout}\n{done.stderr}")
            r = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(r)
            phases = ", ".join(f"{k} {v:.1f}" for k, v in r["phases"].items())
            print(f"{r['patches']:>7,} patches of {args.size} px (generated in {made:.0f} s): {r['seconds']:6.1f} s, "
                  f"peak RSS {r['peak_mib']:7.1f} MiB, growth after imports {r['growth_mib']:7.1f} MiB "
                  f"(phases, s: {phases})", flush=True)
    first, last = results[0], results[-1]
    print(f"growth ratio {last['growth_mib'] / max(first['growth_mib'], 1.0):.2f} "
          f"({last['patches']:,} vs {first['patches']:,} patches)")
    print(f"ratio {last['peak_mib'] / first['peak_mib']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
