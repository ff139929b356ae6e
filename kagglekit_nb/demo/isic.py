"""A synthetic ISIC 2024 competition in the real on-disk layout (no such data ships in any package).

    train-metadata.csv     the 55 columns of the real file, in order, with their dtypes
    test-metadata.csv      the 44 columns that are not train-only
    train-image.hdf5       flat root, one scalar dataset per isic_id holding its JPEG bytes
    test-image.hdf5
    sample_submission.csv  isic_id,target (0.3 everywhere, like the real one)
    solution.csv           isic_id,target for test: the answer key, NOT part of the real layout (for scoring)

Lesions are drawn per patient: each patient has a baseline lesion profile (size, colour, border) and
a risk that grows with age. A malignant lesion is an outlier against its own patient's lesions (the
"ugly duckling"): larger, with a more irregular border and more colours. Each of these shows in the
image (drawn with numpy, 15 mm field of view, 100-200 px) and, with measurement noise, in the
`tbp_lv_*` columns; a few tabular columns carry signal the image lacks. Neither modality alone is
perfect, and patient-normalised features beat raw ones. Positives are ~3% (0.1% in the real data;
the demo needs enough of them for cross-validation).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

__all__ = ["make_isic_demo"]

FIELD_OF_VIEW_MM = 15.0  # the real crops show 15 mm x 15 mm of skin around the lesion

# tbp_lv_location, tbp_lv_location_simple, anatom_site_general, weight, body position (x, y, z) in mm
_LOCATIONS = (
    ("Torso Back Top Third", "Torso Back", "posterior torso", 0.14, (0, 1300, -120)),
    ("Torso Back Middle Third", "Torso Back", "posterior torso", 0.12, (0, 1150, -120)),
    ("Torso Back Bottom Third", "Torso Back", "posterior torso", 0.08, (0, 1000, -110)),
    ("Torso Front Top Half", "Torso Front", "anterior torso", 0.09, (0, 1250, 120)),
    ("Torso Front Bottom Half", "Torso Front", "anterior torso", 0.06, (0, 1000, 120)),
    ("Left Leg - Upper", "Left Leg", "lower extremity", 0.07, (-100, 600, 0)),
    ("Left Leg - Lower", "Left Leg", "lower extremity", 0.06, (-100, 250, 10)),
    ("Right Leg - Upper", "Right Leg", "lower extremity", 0.07, (100, 600, 0)),
    ("Right Leg - Lower", "Right Leg", "lower extremity", 0.06, (100, 250, 10)),
    ("Left Arm - Upper", "Left Arm", "upper extremity", 0.04, (-220, 1150, 0)),
    ("Left Arm - Lower", "Left Arm", "upper extremity", 0.035, (-260, 900, 30)),
    ("Right Arm - Upper", "Right Arm", "upper extremity", 0.04, (220, 1150, 0)),
    ("Right Arm - Lower", "Right Arm", "upper extremity", 0.035, (260, 900, 30)),
    ("Head & Neck", "Head & Neck", "head/neck", 0.05, (0, 1550, 20)),
    ("Unknown", "Unknown", None, 0.01, (0, 900, 0)),
)
_ATTRIBUTIONS = (  # attribution, copyright_license, weight (a patient comes from one institution)
    ("Memorial Sloan Kettering Cancer Center", "CC-BY", 0.35),
    ("Department of Dermatology, Hospital Clínic de Barcelona", "CC-BY-NC", 0.2),
    ("Frazer Institute, The University of Queensland, Dermatology Research Centre", "CC-BY", 0.15),
    ("University Hospital of Basel", "CC-BY-NC", 0.1),
    ("ACEMID MIA", "CC-0", 0.1),
    ("ViDIR Group, Department of Dermatology, Medical University of Vienna", "CC-BY-NC", 0.05),
    ("Department of Dermatology, University of Athens, Andreas Syggros Hospital of Skin and Venereal "
     "Diseases, Alexandra Hospital", "CC-BY", 0.05),
)
_MALIGNANT = (  # iddx_full of a malignant lesion, weight
    ("Malignant::Malignant melanocytic proliferations (Melanoma)::Melanoma Invasive::"
     "Melanoma Invasive, Superficial spreading", 0.25),
    ("Malignant::Malignant melanocytic proliferations (Melanoma)::Melanoma in situ", 0.15),
    ("Malignant::Malignant adnexal epithelial proliferations - Follicular::Basal cell carcinoma::"
     "Basal cell carcinoma, Nodular", 0.35),
    ("Malignant::Malignant epidermal proliferations::Squamous cell carcinoma in situ", 0.25),
)
_BENIGN_DETAILED = (
    "Benign::Benign melanocytic proliferations::Nevus",
    "Benign::Benign epidermal proliferations::Seborrheic keratosis",
    "Indeterminate::Indeterminate melanocytic proliferations::Atypical melanocytic neoplasm",
)
_MITOTIC = ("<1/mm^2", "1/mm^2", "2/mm^2", "3/mm^2", ">4/mm^2")
# Blotch colours of a variegated lesion (sRGB): near-black brown, blue-grey, red.
_BLOTCHES = np.array([[40, 28, 26], [84, 100, 142], [178, 66, 62]], np.float32)


def _sigmoid(x):
    return 0.5 + 0.5 * np.tanh(0.5 * x)  # the logistic function, without overflow


def _lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB (D65) → sRGB in 0..255, for an array of shape (..., 3)."""
    L, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    fy = (L + 16.0) / 116.0
    f = np.stack([fy + a / 500.0, fy, fy - b / 200.0], axis=-1)
    xyz = np.where(f > 6 / 29, f ** 3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * np.array([0.95047, 1.0, 1.08883])
    m = np.array([[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]])
    lin = np.clip(xyz @ m.T, 0.0, 1.0)
    srgb = np.where(lin > 0.0031308, 1.055 * lin ** (1 / 2.4) - 0.055, 12.92 * lin)
    return srgb * 255.0


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field of roughly unit spread: a coarse grid upsampled bicubically."""
    from PIL import Image

    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC))


class _NoiseBank:
    """Large noise fields made once; each image takes random crops of them (fast, still varied)."""

    def __init__(self, rng: np.random.Generator, size: int = 640):
        self.blotch = [_smooth_noise(rng, size, size // 30) for _ in range(3)]  # blotches ~30 px across
        self.light = _smooth_noise(rng, size, size // 50)                       # uneven lighting
        self.sensor = rng.standard_normal((3, size, size), dtype=np.float32) * 2  # pixel noise


def _crop(rng: np.random.Generator, field: np.ndarray, h: int, w: int) -> np.ndarray:
    y, x = rng.integers(0, field.shape[-2] - h), rng.integers(0, field.shape[-1] - w)
    return field[..., y:y + h, x:x + w]


def _render(rng: np.random.Generator, row: dict, bank: _NoiseBank) -> bytes:
    """JPEG bytes of one lesion tile: skin background, a lesion blob with a perturbed border."""
    from PIL import Image

    w = int(rng.integers(100, 201))
    h = int(np.clip(w + rng.integers(-8, 9), 100, 200))
    px_per_mm = w / FIELD_OF_VIEW_MM
    a = min(row["long_mm"] / 2 * px_per_mm, 0.46 * min(w, h))
    b = max(a * row["minor_mm"] / row["long_mm"], 2.0)
    angle = rng.uniform(0, np.pi)
    dy = (np.arange(h, dtype=np.float32) - np.float32(h / 2 + rng.normal(0, 0.03 * h)))[:, None]
    dx = (np.arange(w, dtype=np.float32) - np.float32(w / 2 + rng.normal(0, 0.03 * w)))[None, :]
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u = (dx * cos + dy * sin) / np.float32(a)
    v = (dy * cos - dx * sin) / np.float32(b)
    r = np.sqrt(u * u + v * v)
    # Border irregularity: random harmonics of the outline, tabulated over 512 angles.
    theta = np.linspace(-np.pi, np.pi, 513)
    outline = np.ones_like(theta)
    for k in range(2, 10):
        outline += row["border_amp"] * rng.normal(0, 1) / k ** 0.6 * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    outline = np.maximum(outline, 0.35).astype(np.float32)
    boundary = outline[((np.arctan2(v, u) + np.pi) * (512 / (2 * np.pi))).astype(np.int32)]
    edge_px = rng.uniform(1.2, 3.0)
    mask = _sigmoid((boundary - r) * np.float32(a / edge_px))
    shade = 0.82 + 0.18 * np.minimum(r, 1)  # darker centre

    # Colour variegation: smooth blotches of other colours, mixed in by weight (per channel: fast).
    weights = [row["variegation"] * _sigmoid(3 * _crop(rng, bank.blotch[i], h, w) - 1.2) for i in range(3)]
    total = weights[0] + weights[1] + weights[2]
    scale = 1 / np.maximum(total / 0.95, 1)
    light = 1 + 0.05 * _crop(rng, bank.light, h, w)
    sensor = _crop(rng, bank.sensor, h, w)
    channels = []
    for c in range(3):
        lesion = row["lesion_rgb"][c] * shade * (1 - total * scale)
        for weight, colour in zip(weights, _BLOTCHES):
            lesion += weight * scale * colour[c]
        skin = row["skin_rgb"][c] * light
        channels.append(skin + (lesion - skin) * mask + sensor[c])
    image = np.stack(channels, axis=-1)
    buf = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=int(rng.integers(85, 96)))
    return buf.getvalue()


def _patients(rng: np.random.Generator, n: int, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Per-patient demographics, institution, baseline lesion profile and risk."""
    age = np.clip(np.round(rng.normal(57, 13, n) / 5) * 5, 20, 85)
    age[rng.random(n) < 0.04] = np.nan
    sex = rng.choice(np.array(["male", "female"], object), n, p=[0.68, 0.32])
    sex[rng.random(n) < 0.03] = None
    inst = rng.choice(len(_ATTRIBUTIONS), n, p=[w for *_, w in _ATTRIBUTIONS])
    return {
        "patient_id": ids,
        "age": age,
        "sex": sex,
        "attribution": np.array([_ATTRIBUTIONS[i][0] for i in inst], object),
        "license": np.array([_ATTRIBUTIONS[i][1] for i in inst], object),
        "log_size": rng.normal(np.log(3.2), 0.35, n),   # typical lesion size varies a lot between patients
        "border": rng.normal(0, 0.8, n),
        "colour": rng.normal(0, 0.8, n),
        "skin_lab": np.stack([rng.normal(63, 6, n), rng.normal(15, 3, n), rng.normal(27, 3, n)], 1),
        "delta_lab": np.stack([rng.normal(-12, 3, n), rng.normal(6, 2, n), rng.normal(4, 2, n)], 1),
        "risk": 0.05 * (np.nan_to_num(age, nan=57.0) - 57) + rng.normal(0, 0.7, n),
        "xp_share": rng.uniform(0.5, 0.9, n),
    }


def _lesions(rng: np.random.Generator, pat: dict, n_rows: int, n_pos: int) -> dict[str, np.ndarray]:
    """Rows of one split: which patient, the label, and the latent lesion traits."""
    n_pat = len(pat["patient_id"])
    share = rng.lognormal(0, 0.7, n_pat)
    counts = 3 + rng.multinomial(n_rows - 3 * n_pat, share / share.sum())
    p = np.repeat(np.arange(n_pat), counts)
    weight = np.exp(pat["risk"][p])
    y = np.zeros(n_rows, int)
    y[rng.choice(n_rows, n_pos, replace=False, p=weight / weight.sum())] = 1
    # Each trait = patient baseline + the lesion's own deviation; malignant lesions deviate more.
    return {
        "p": p, "y": y,
        "size": rng.normal(0, 1, n_rows) + 0.9 * y,
        "border": 0.5 * pat["border"][p] + rng.normal(0, 1, n_rows) + 2.2 * y,
        "colour": 0.5 * pat["colour"][p] + rng.normal(0, 1, n_rows) + 2.4 * y,
        "tab": rng.normal(0, 1, n_rows) + 0.8 * y,  # seen only by the tabular measurements
    }


def _metadata(rng: np.random.Generator, pat: dict, les: dict, isic_ids: np.ndarray):
    """The 55-column metadata frame plus what the renderer needs per row."""
    import pandas as pd

    n = len(les["y"])
    p, y = les["p"], les["y"]
    long_mm = np.clip(np.exp(pat["log_size"][p] + 0.28 * les["size"]), 1.0, 25.0)
    ecc = np.clip(rng.normal(0.62, 0.14, n) + 0.02 * les["border"], 0.05, 0.97)
    minor_mm = np.minimum(long_mm * np.sqrt(1 - ecc ** 2) * rng.normal(1, 0.03, n), long_mm)
    border_amp = 0.02 + 0.14 * _sigmoid(1.5 * les["border"] - 2.0)
    variegation = 0.9 * _sigmoid(1.8 * les["colour"] - 2.5)
    area = np.pi / 4 * long_mm * minor_mm * (1 + border_amp * rng.normal(0.5, 0.3, n))
    a, b = long_mm / 2, minor_mm / 2
    ellipse = np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b)))  # Ramanujan's perimeter
    perimeter = ellipse * (1 + 0.8 * border_amp) * np.exp(np.abs(rng.normal(0, 0.06, n)))

    skin = pat["skin_lab"][p] + rng.normal(0, [2.0, 1.0, 1.5], (n, 3))
    delta = pat["delta_lab"][p] + rng.normal(0, [3.0, 2.0, 2.0], (n, 3)) + np.outer(y, [-2.0, 1.0, 0.0])
    lab = skin + delta
    hue = np.degrees(np.arctan2(lab[:, 2], lab[:, 1]))
    hue_ext = np.degrees(np.arctan2(skin[:, 2], skin[:, 1]))
    color_std = 0.8 * np.exp(0.15 * les["colour"] + rng.normal(0, 0.45, n))
    loc = rng.choice(len(_LOCATIONS), n, p=np.array([w for *_, w, _ in _LOCATIONS]) / sum(w for *_, w, _ in _LOCATIONS))
    xyz = np.array([_LOCATIONS[i][4] for i in loc], float) + rng.normal(0, 40, (n, 3))
    age = pat["age"][p]

    diag = np.array(["Benign"] * n, object)
    detailed = (y == 0) & (rng.random(n) < 0.03)
    diag[detailed] = rng.choice(np.array(_BENIGN_DETAILED, object), detailed.sum())
    diag[y == 1] = rng.choice(np.array([d for d, _ in _MALIGNANT], object), y.sum(), p=[w for _, w in _MALIGNANT])
    levels = [d.split("::") + [None] * (5 - len(d.split("::"))) for d in diag]
    invasive = np.array(["Melanoma Invasive" in d for d in diag])
    iddx_5 = np.array([lv[4] for lv in levels], object)
    if invasive.any():  # the real file has a rare fifth level
        iddx_5[np.flatnonzero(invasive)[0]] = "Melanoma Invasive, Associated with a nevus"
    lesion_ids = np.array([f"IL_{k:07d}" for k in rng.choice(9_000_000, n, replace=False) + 1_000_000], object)

    cols = {
        "isic_id": isic_ids,
        "target": y,
        "patient_id": pat["patient_id"][p],
        "age_approx": age,
        "sex": pat["sex"][p],
        "anatom_site_general": np.array([_LOCATIONS[i][2] for i in loc], object),
        "clin_size_long_diam_mm": np.round(long_mm, 2),
        "image_type": "TBP tile: close-up",
        "tbp_tile_type": np.where(rng.random(n) < pat["xp_share"][p], "3D: XP", "3D: white"),
        "tbp_lv_A": lab[:, 1], "tbp_lv_Aext": skin[:, 1],
        "tbp_lv_B": lab[:, 2], "tbp_lv_Bext": skin[:, 2],
        "tbp_lv_C": np.hypot(lab[:, 1], lab[:, 2]), "tbp_lv_Cext": np.hypot(skin[:, 1], skin[:, 2]),
        "tbp_lv_H": hue, "tbp_lv_Hext": hue_ext,
        "tbp_lv_L": lab[:, 0], "tbp_lv_Lext": skin[:, 0],
        "tbp_lv_areaMM2": area,
        "tbp_lv_area_perim_ratio": perimeter ** 2 / area,
        "tbp_lv_color_std_mean": color_std,
        "tbp_lv_deltaA": delta[:, 1], "tbp_lv_deltaB": delta[:, 2], "tbp_lv_deltaL": delta[:, 0],
        "tbp_lv_deltaLB": np.hypot(delta[:, 0], delta[:, 2]),
        "tbp_lv_deltaLBnorm": np.clip(7.5 + 1.6 * les["tab"] + rng.normal(0, 1.5, n), 2.5, 30),
        "tbp_lv_eccentricity": ecc,
        "tbp_lv_location": np.array([_LOCATIONS[i][0] for i in loc], object),
        "tbp_lv_location_simple": np.array([_LOCATIONS[i][1] for i in loc], object),
        "tbp_lv_minorAxisMM": minor_mm,
        "tbp_lv_nevi_confidence": 100 * _sigmoid(2.0 - 1.0 * les["tab"] - 0.1 * les["colour"] + rng.normal(0, 1, n)),
        "tbp_lv_norm_border": 10 * _sigmoid(0.4 * les["border"] - 0.8 + rng.normal(0, 1.5, n)),
        "tbp_lv_norm_color": 10 * _sigmoid(0.4 * les["colour"] - 1.2 + rng.normal(0, 1.5, n)),
        "tbp_lv_perimeterMM": perimeter,
        "tbp_lv_radial_color_std_max": color_std * rng.uniform(0.7, 1.5, n) + np.abs(rng.normal(0, 0.2, n)),
        "tbp_lv_stdL": 1.0 + 0.5 * np.exp(0.1 * les["colour"] + rng.normal(0, 0.4, n)),
        "tbp_lv_stdLExt": 0.3 + np.abs(rng.normal(1.2, 0.3, n)),
        "tbp_lv_symm_2axis": np.clip(0.25 + 0.02 * les["border"] + rng.normal(0, 0.08, n), 0.02, 0.95),
        "tbp_lv_symm_2axis_angle": rng.integers(0, 36, n) * 5,
        "tbp_lv_x": xyz[:, 0], "tbp_lv_y": xyz[:, 1], "tbp_lv_z": xyz[:, 2],
        "attribution": pat["attribution"][p],
        "copyright_license": pat["license"][p],
        "lesion_id": np.where((y == 1) | detailed, lesion_ids, None),
        "iddx_full": diag,
        "iddx_1": np.array([lv[0] for lv in levels], object),
        "iddx_2": np.array([lv[1] for lv in levels], object),
        "iddx_3": np.array([lv[2] for lv in levels], object),
        "iddx_4": np.array([lv[3] for lv in levels], object),
        "iddx_5": iddx_5,
        "mel_mitotic_index": np.where(invasive, rng.choice(np.array(_MITOTIC, object), n), None),
        "mel_thick_mm": np.where(invasive, np.round(rng.lognormal(np.log(0.5), 0.6, n), 2), np.nan),
        "tbp_lv_dnn_lesion_confidence": np.clip(100 - np.abs(rng.normal(0, np.where(y == 1, 2, 8))), 0, 100),
    }
    frame = pd.DataFrame(cols)
    render = {
        "long_mm": long_mm, "minor_mm": minor_mm, "border_amp": border_amp,
        "variegation": variegation.astype(np.float32),
        "skin_rgb": _lab_to_rgb(skin).astype(np.float32), "lesion_rgb": _lab_to_rgb(lab).astype(np.float32),
    }
    return frame, render


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}={value!r} must be an integer >= {low}.")


def make_isic_demo(
    out: str | Path,
    *,
    seed: int = 0,
    n_train: int = 2000,
    n_test: int | None = None,
    n_patients: int | None = None,
    positive_rate: float = 0.03,
) -> Path:
    """Write the synthetic ISIC 2024 competition into `out` and return its path.

    `n_test` defaults to n_train // 4 (at least 20); `n_patients` (training patients) to n_train // 50,
    between 20 and 500; test patients are other people, about as many per lesion as in train.
    """
    import h5py
    import pandas as pd

    from ..tasks.isic.data import SAMPLE_FILE, TEST_COLUMNS, TEST_FILE, TEST_IMAGES, TRAIN_COLUMNS, TRAIN_FILE, TRAIN_IMAGES

    _check_int("seed", seed, 0)
    _check_int("n_train", n_train, 100)
    n_test = max(20, n_train // 4) if n_test is None else n_test
    _check_int("n_test", n_test, 20)
    n_patients = int(np.clip(n_train // 50, 20, 500)) if n_patients is None else n_patients
    _check_int("n_patients", n_patients, 2)
    if n_patients > n_train // 3:
        raise ValueError(
            f"n_patients={n_patients} leaves fewer than 3 lesions per patient; use at most {n_train // 3}."
        )
    if not (isinstance(positive_rate, float) and 0.0 < positive_rate <= 0.2):
        raise ValueError(f"positive_rate={positive_rate!r} must be a float in (0, 0.2].")

    rng = np.random.default_rng(seed)
    n_test_patients = int(np.clip(round(n_patients * n_test / n_train), 2, n_test // 3))
    n_all = n_patients + n_test_patients
    patient_ids = np.array([f"IP_{k:07d}" for k in rng.choice(9_000_000, n_all, replace=False) + 1_000_000], object)
    numbers = np.sort(rng.choice(9_000_000, n_train + n_test, replace=False)) + 15_670
    isic_ids = np.array([f"ISIC_{k:07d}" for k in numbers], object)
    pat = _patients(rng, n_all, patient_ids)
    # The data has some missing values of each kind; make sure train shows every one of them.
    pat["age"][0], pat["sex"][1] = np.nan, None
    splits = {}
    for split, rows, patients, ids in (
        ("train", n_train, slice(0, n_patients), isic_ids[:n_train]),
        ("test", n_test, slice(n_patients, n_all), isic_ids[n_train:]),
    ):
        sub = {k: v[patients] for k, v in pat.items()}
        les = _lesions(rng, sub, rows, max(5 if split == "train" else 2, round(positive_rate * rows)))
        order = rng.permutation(rows)  # isic_ids are sorted, as in the real files; patients interleave
        les = {k: v[order] for k, v in les.items()}
        splits[split] = _metadata(rng, sub, les, ids)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, _ = splits["train"]
    unknown = ["tbp_lv_location", "tbp_lv_location_simple", "anatom_site_general"]
    train.loc[train.index[:1], unknown] = ["Unknown", "Unknown", None]
    train[list(TRAIN_COLUMNS)].to_csv(out / TRAIN_FILE, index=False)
    test, _ = splits["test"]
    test[list(TEST_COLUMNS)].to_csv(out / TEST_FILE, index=False)
    bank = _NoiseBank(rng)
    for split, file in (("train", TRAIN_IMAGES), ("test", TEST_IMAGES)):
        frame, render = splits[split]
        with h5py.File(out / file, "w") as f:
            for i, isic_id in enumerate(frame["isic_id"]):
                jpeg = _render(rng, {k: v[i] for k, v in render.items()}, bank)
                f.create_dataset(isic_id, data=np.void(jpeg))
    pd.DataFrame({"isic_id": test["isic_id"], "target": 0.3}).to_csv(out / SAMPLE_FILE, index=False)
    test[["isic_id", "target"]].to_csv(out / "solution.csv", index=False)
    return out
