"""GlacierHack submission: `maskgeration(imagepath, out_dir)` writes one glacier mask per input tile.

This file is copied verbatim into the code package next to `model.pth` and runs on the graders'
machine, so it depends only on numpy, torch, segmentation_models_pytorch and tifffile (or Pillow).

    maskgeration({"Band1": "test/Band1", ..., "Band5": "test/Band5"}, "masks")

For every tile in the first band folder it stacks the bands in the order the model was trained on,
normalises them with the training statistics saved in `model.pth`, runs every saved fold model with
test-time augmentation window by window (overlapping windows, blended), averages the class
probabilities and writes the most likely class as a uint8 mask (0 background, 85 glacier,
170 debris, 255 lake) under the tile's own file name. A package without models applies the NDSI
rule instead: glacier where (green - swir1) / (green + swir1) > threshold, background elsewhere.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import torch

FORMAT = "kagglekit_nb.glacier_package/1"  # the `format` entry of a model.pth this file can read
MODEL_FILE = "model.pth"
PAD_MULTIPLE = 32  # U-Net encoders halve the size five times: every input side must divide by 32
BATCH_SIZE = 4  # windows per forward pass
TIFF_SUFFIXES = (".tif", ".tiff")

# Test-time augmentations: name -> (transform, inverse) on NCHW tensors.
TTA = {
    "none": (lambda x: x, lambda x: x),
    "hflip": (lambda x: x.flip(-1), lambda x: x.flip(-1)),
    "vflip": (lambda x: x.flip(-2), lambda x: x.flip(-2)),
    "rot90": (lambda x: x.rot90(1, (-2, -1)), lambda x: x.rot90(-1, (-2, -1))),
    "rot180": (lambda x: x.rot90(2, (-2, -1)), lambda x: x.rot90(-2, (-2, -1))),
    "rot270": (lambda x: x.rot90(3, (-2, -1)), lambda x: x.rot90(-3, (-2, -1))),
}


# ------------------------------------------------------------------------------------------- files

def _key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", str(name)).lower()


def _band_folders(imagepath, wanted: list[str]) -> list[Path]:
    """The folder of each wanted band, looked up by name whatever the case ("band1", "Band_1")."""
    if isinstance(imagepath, (str, os.PathLike)):  # a folder that holds the band folders
        root = Path(imagepath)
        if not root.is_dir():
            raise FileNotFoundError(f"imagepath {str(root)!r} is not a folder.")
        imagepath = {p.name: p for p in root.iterdir() if p.is_dir()}
    by_key = {_key(k): Path(v) for k, v in dict(imagepath).items()}
    missing = [band for band in wanted if _key(band) not in by_key]
    if missing:
        raise KeyError(f"imagepath has no folder for {', '.join(missing)}; it names "
                       f"{', '.join(map(str, imagepath)) or 'nothing'}. The model needs {', '.join(wanted)}.")
    folders = [by_key[_key(band)] for band in wanted]
    for band, folder in zip(wanted, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"the folder for {band}, {folder}, does not exist.")
    return folders


def _read(path: Path) -> np.ndarray:
    try:
        import tifffile
    except ImportError:  # Pillow reads single-band float32 and uint8 TIFFs as well
        from PIL import Image

        with Image.open(path) as image:
            return np.asarray(image)
    return tifffile.imread(path)


def _write(path: Path, mask: np.ndarray) -> None:
    try:
        import tifffile
    except ImportError:
        from PIL import Image

        Image.fromarray(mask).save(path, format="TIFF")
        return
    tifffile.imwrite(path, mask)


def _read_tile(folders: list[Path], bands: list[str], name: str) -> np.ndarray:
    """The tile `name` as CHW float32, one channel per band folder."""
    planes = []
    for band, folder in zip(bands, folders):
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"tile {name} is in {folders[0]} but missing from {band} ({folder}).")
        plane = np.squeeze(_read(path))
        if plane.ndim != 2:
            raise ValueError(f"{path} has shape {plane.shape}; a band file holds one 2-D band.")
        if planes and plane.shape != planes[0].shape:
            raise ValueError(f"{path} is {plane.shape} but the tile's first band is {planes[0].shape}.")
        planes.append(plane.astype(np.float32, copy=False))
    return np.stack(planes)


# ------------------------------------------------------------------------------------------- model

def _load_package(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the package needs {MODEL_FILE} next to solution.py.")
    package = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(package, dict) or package.get("format") != FORMAT:
        found = package.get("format") if isinstance(package, dict) else type(package).__name__
        raise ValueError(f"{path} is not a package file of format {FORMAT} (found {found!r}); "
                         "write it with kagglekit_nb.tasks.glacier.package.export_code_package.")
    return package


def _build_models(package: dict, device: torch.device) -> list[torch.nn.Module]:
    import segmentation_models_pytorch as smp

    models = []
    for state in package["models"]:
        model = smp.create_model(package["arch"], encoder_name=package["encoder"], encoder_weights=None,
                                 in_channels=package["in_channels"], classes=package["n_classes"])
        # fp16 packages are cast back: inference runs in fp32
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        models.append(model.to(device).eval())
    return models


def _normalise(x: np.ndarray, stats: dict) -> np.ndarray:
    """(x - mean) / std per band; a constant band is only centred; NaN/inf become 0 (the mean)."""
    mean, std = np.asarray(stats["mean"], np.float64), np.asarray(stats["std"], np.float64)
    std = np.where(std > 0, std, 1.0)
    out = (x - mean.astype(np.float32)[:, None, None]) / std.astype(np.float32)[:, None, None]
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)


def _ensemble(models: list[torch.nn.Module], tta: list[str]):
    """A function from a window batch to its class probabilities, averaged over folds and TTA."""
    def predict(batch: torch.Tensor) -> torch.Tensor:
        total = None
        for model in models:
            for name in tta:
                forward, inverse = TTA[name]
                probs = inverse(model(forward(batch)).float().softmax(1))
                total = probs if total is None else total + probs
        return total / (len(models) * len(tta))
    return predict


# --------------------------------------------------------------------------- sliding-window inference

def _blend_weights(size: int, blend: str) -> np.ndarray:
    i = (np.arange(size) + 0.5) / size
    if blend == "cosine":
        return 0.5 - 0.5 * np.cos(2 * np.pi * i)
    if blend == "linear":
        return 1.0 - np.abs(2 * i - 1)
    return np.ones(size)


def _starts(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    return list(range(0, length - window, stride)) + [length - window]


def _sliding_window(predict, image_chw: np.ndarray, *, window: int, overlap: int, n_classes: int,
                    blend: str, device: torch.device) -> np.ndarray:
    """Class probabilities (n_classes, H, W) of an image of any size, from overlapping windows.

    A side shorter than the window runs at its own size, zero-padded up to a multiple of 32.
    """
    image = torch.from_numpy(np.ascontiguousarray(image_chw, dtype=np.float32))
    _, h, w = image.shape
    win_h = min(window, -(-h // PAD_MULTIPLE) * PAD_MULTIPLE)
    win_w = min(window, -(-w // PAD_MULTIPLE) * PAD_MULTIPLE)
    padded = torch.nn.functional.pad(image, (0, max(win_w - w, 0), 0, max(win_h - h, 0)))
    ph, pw = padded.shape[-2:]
    stride = window - overlap
    weight = torch.as_tensor(np.outer(_blend_weights(win_h, blend), _blend_weights(win_w, blend)),
                             dtype=torch.float32).clamp_min(1e-6)
    out = torch.zeros((n_classes, ph, pw))
    norm = torch.zeros((ph, pw))
    boxes = [(y, x) for y in _starts(ph, win_h, stride) for x in _starts(pw, win_w, stride)]
    for i in range(0, len(boxes), BATCH_SIZE):
        chunk = boxes[i:i + BATCH_SIZE]
        batch = torch.stack([padded[:, y:y + win_h, x:x + win_w] for y, x in chunk]).to(device)
        probs = predict(batch).float().cpu()
        for (y, x), p in zip(chunk, probs):
            out[:, y:y + win_h, x:x + win_w] += p * weight
            norm[y:y + win_h, x:x + win_w] += weight
    return (out / norm)[:, :h, :w].numpy()


def _ndsi(tile: np.ndarray, bands: list[str], ndsi: dict) -> np.ndarray:
    """Class 1 (glacier) where (green - swir1) / (green + swir1) > threshold, else 0 (NaN -> background)."""
    green, swir = tile[bands.index(ndsi["green_band"])], tile[bands.index(ndsi["swir1_band"])]
    with np.errstate(invalid="ignore", divide="ignore"):
        index = (green - swir) / (green + swir)
    return (np.nan_to_num(index, nan=-1.0) > ndsi["threshold"]).astype(np.uint8)


# ----------------------------------------------------------------------------------------- entry

def maskgeration(imagepath, out_dir) -> None:
    """Write one uint8 mask (0, 85, 170, 255) per tile of imagepath's first band into `out_dir`."""
    start = time.monotonic()
    package = _load_package(Path(__file__).resolve().parent / MODEL_FILE)
    bands = list(package["band_folders"])
    folders = _band_folders(imagepath, bands)
    names = sorted(p.name for p in folders[0].iterdir() if p.suffix.lower() in TIFF_SUFFIXES)
    if not names:
        raise FileNotFoundError(f"no .tif tiles in {folders[0]} (band {bands[0]}).")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    values = np.asarray(package["label_values"], np.uint8)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = _build_models(package, device) if package["models"] else []
    # each model sees the tile normalised with its own training fold's statistics
    stats = package.get("model_stats") or [package["stats"]] * len(models)
    predictors = [_ensemble([model], list(package["tta"])) for model in models]
    with torch.inference_mode():
        for name in names:
            tile = _read_tile(folders, bands, name)
            if models:
                probs = sum(_sliding_window(predict, _normalise(tile, st), window=package["window"],
                                            overlap=package["overlap"], n_classes=package["n_classes"],
                                            blend=package["blend"], device=device)
                            for predict, st in zip(predictors, stats)) / len(models)
                classes = probs.argmax(0)
            else:
                classes = _ndsi(tile, bands, package["ndsi"])
            _write(out_dir / name, values[classes])
    what = f"{len(models)} fold model(s) x {len(package['tta'])} TTA on {device}" if models else "the NDSI rule"
    print(f"maskgeration: {len(names)} masks in {out_dir} from {what}, {time.monotonic() - start:.1f} s")
