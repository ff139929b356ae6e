"""Small demo competitions in the real on-disk layouts, so every notebook runs anywhere.

The classification demo is real data: scikit-learn's handwritten digits (1,797 8x8 images, bundled
with scikit-learn, no download), upscaled and laid out like a Kaggle image competition:

    train.csv                id,label
    train/<id>.png           one image per row of train.csv
    test.csv                 id
    test/<id>.png
    sample_submission.csv    id,label (a placeholder label)
    solution.csv             the answer key for test (not part of a real competition; used to score)
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

__all__ = ["make_classification_demo"]

_DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_STYLES = {"id_style": ("str", "int"), "label_style": ("str", "int"), "color": ("gray", "rgb")}
_FORMATS = {"png": "PNG", "jpg": "JPEG"}


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {', '.join(valid)}.")


def make_classification_demo(
    out: str | Path,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    image_size: int = 28,
    id_style: str = "str",
    label_style: str = "str",
    color: str = "gray",
    image_format: str = "png",
) -> Path:
    """Write the digits competition into `out` and return its path.

    `id_style`/`label_style` choose string ids ("a3f2…") or integers, and string labels ("seven")
    or integers; `color` writes grayscale ("gray") or RGB images.
    """
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    import pandas as pd

    for name, valid in _STYLES.items():
        _check_choice(name, locals()[name], valid)
    _check_choice("image_format", image_format, tuple(_FORMATS))
    if not 0.05 <= test_fraction <= 0.5:
        raise ValueError(f"test_fraction={test_fraction!r} must be between 0.05 and 0.5.")
    if not 8 <= image_size <= 1024:
        raise ValueError(f"image_size={image_size!r} must be between 8 and 1024 pixels.")

    out = Path(out)
    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8)
    targets = digits.target
    n = len(targets)
    if id_style == "str":
        ids = [hashlib.sha1(f"digit-{seed}-{i}".encode()).hexdigest()[:10] for i in range(n)]
    else:
        rng = np.random.default_rng(seed)
        ids = [str(v) for v in rng.permutation(np.arange(1000, 1000 + n))]
    labels = [_DIGIT_NAMES[t] if label_style == "str" else str(t) for t in targets]
    idx_train, idx_test = train_test_split(
        np.arange(n), test_size=test_fraction, random_state=seed, stratify=targets
    )
    ext = image_format
    for split, idx in (("train", idx_train), ("test", idx_test)):
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        for i in idx:
            img = Image.fromarray(images[i]).resize((image_size, image_size), Image.BILINEAR)
            if color == "rgb":
                img = img.convert("RGB")
            img.save(folder / f"{ids[i]}.{ext}", format=_FORMATS[ext])

    def frame(idx, with_label):
        cols = {"id": [ids[i] for i in idx]}
        if with_label:
            cols["label"] = [labels[i] for i in idx]
        return pd.DataFrame(cols)

    frame(idx_train, True).to_csv(out / "train.csv", index=False)
    frame(idx_test, False).to_csv(out / "test.csv", index=False)
    sample = frame(idx_test, False)
    sample["label"] = labels[idx_train[0]]
    sample.to_csv(out / "sample_submission.csv", index=False)
    frame(idx_test, True).to_csv(out / "solution.csv", index=False)
    return out
