"""Synthetic glacier demo in the two real layouts: HKH-style pretraining patches and GlacierHack tiles.

    make_glacier_demo(out)                    # real 512x512 tiles (about 700 MB, under a minute)
    make_glacier_demo(out, tile_size=64)      # the same scenes at 64x64 (about 12 MB, a second or two)

Layout written into `out`:

    hkh/patches/slice_<scene>_img_NNN.npy     float32 HxWx15: Landsat-7 B1,B2,B3,B4,B5,B6_VCID_1,
                                              B6_VCID_2,B7,B8,BQA, then NDWI, NDSI, NDVI, elevation, slope
    hkh/patches/slice_<scene>_mask_NNN.npy    uint8 HxWx2 (0/1): clean ice, debris-covered ice
    glacierhack/Train/Band1..Band5/imgNNN.tif single-band float32; Band1..5 = Landsat-8 B2 blue,
                                              B3 green, B4 red, B6 SWIR1, B10 TIR1
    glacierhack/Train/labels/imgNNN.tif       uint8: 0 background, 85 glacier, 170 debris, 255 lake
    glacierhack/Test/Band1..Band5/imgNNN.tif  unlabelled tiles (numbered after the training tiles)
    glacierhack/solution/imgNNN.tif           the answer key for Test, in the label encoding: the
                                              file a correct submission writes for each test tile
                                              (not part of a real competition; used to score)

Units: optical bands are top-of-atmosphere reflectance (0-1), thermal bands brightness temperature
in kelvin, elevation metres, slope degrees, BQA Collection-1 style bit flags (672 clear, 752 cloud,
3744 snow/ice, 1 no data). Each HKH scene is one large image cut into adjacent patches, with a
no-data (NaN) wedge in a corner as at the edge of a Landsat-7 scene; no-data pixels are masked 0.
The fourth GlacierHack training tile (img004.tif) has such a wedge too, labelled background.

The scenes are drawn from smooth random fields: terrain, glaciers above a snow line with tongues
reaching down valleys, debris cover on the lower part of each tongue, small lakes at the termini,
lithology, vegetation low down, hill shading and, on some tiles, cloud. Spectra follow Landsat
reflectances: snow and ice bright in the visible and dark in SWIR (NDSI near 0.8), debris and rock
alike (NDSI below 0), lakes dark with a high NDWI and NDSI, cloud bright in the visible and SWIR
(NDSI near 0.2) and cold. Debris-covered ice is told from bare rock mostly by temperature (several
kelvin colder than rock at the same height) and by where it lies: on a glacier tongue, below
clean ice. An NDSI threshold therefore finds clean ice but calls debris background and lakes
glacier; a model that uses context does much better.

Structures scale with the tile size, so a 64-pixel tile shows the same scene as a 512-pixel one at
a coarser pixel (30 m at 512, 240 m at 64).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["make_glacier_demo", "HKH_CHANNEL_IDS", "HACK_BAND_IDS", "LABEL_VALUES"]

# Channel order of an HKH patch (Landsat-7 ETM+ bands, then indices and terrain).
HKH_CHANNEL_IDS = ("B1", "B2", "B3", "B4", "B5", "B6_VCID_1", "B6_VCID_2", "B7", "B8", "BQA",
                   "NDWI", "NDSI", "NDVI", "elevation", "slope")
# GlacierHack band folders and the Landsat-8 OLI/TIRS band each one holds.
HACK_BAND_IDS = {"Band1": "B2", "Band2": "B3", "Band3": "B4", "Band4": "B6", "Band5": "B10"}
# Label encoding of a GlacierHack mask: class index -> pixel value.
LABEL_VALUES = (0, 85, 170, 255)  # background, glacier (clean ice), debris-covered ice, lake

_REAL_TILE = 512          # the real tile side; the pixel is 30 m at this size
_PATCHES_PER_SCENE = 8    # an HKH scene is cut into a 2 x 4 grid of adjacent patches
_QA_CLEAR, _QA_CLOUD, _QA_SNOW, _QA_NODATA = 672.0, 752.0, 3744.0, 1.0

# Mean TOA reflectance of each surface in blue, green, red, NIR, SWIR1, SWIR2 (flat, sunlit).
_SNOW = np.array([0.86, 0.84, 0.80, 0.68, 0.07, 0.05], np.float32)
_BARE_ICE = np.array([0.52, 0.47, 0.40, 0.26, 0.03, 0.02], np.float32)
_DEBRIS = np.array([0.11, 0.13, 0.15, 0.19, 0.21, 0.17], np.float32)
_ROCK_LIGHT = np.array([0.15, 0.17, 0.20, 0.25, 0.29, 0.23], np.float32)
_ROCK_DARK = np.array([0.08, 0.09, 0.10, 0.14, 0.18, 0.15], np.float32)
_VEGETATION = np.array([0.04, 0.07, 0.05, 0.34, 0.17, 0.08], np.float32)
_WATER = np.array([0.11, 0.12, 0.08, 0.03, 0.012, 0.008], np.float32)
_CLOUD = np.array([0.72, 0.70, 0.68, 0.64, 0.46, 0.33], np.float32)
_OPTICAL = ("blue", "green", "red", "nir", "swir1", "swir2")
# Small calibration differences between the two sensors (Landsat-8 relative to Landsat-7).
_L8_GAIN = {"blue": 1.02, "green": 1.0, "red": 0.99, "swir1": 1.01}
_L8_THERMAL_OFFSET = 0.3  # kelvin


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name}={value!r} must be an integer from {low} to {high}.")


def _smooth(rng: np.random.Generator, shape: tuple[int, int], sigma: float, pad: int) -> np.ndarray:
    """Gaussian-filtered white noise scaled to mean 0, std 1 (float32).

    Drawn directly in the frequency domain: random coefficients under the Gaussian's envelope, only
    where it is not negligible, on a grid `pad` pixels larger so that the field does not wrap. With
    `sigma` and `pad` proportional to the tile size, the same coefficients are drawn whatever the
    size, so a small tile shows the same field as a large one, at a coarser pixel.
    """
    from scipy import fft

    sigma = max(float(sigma), 0.7)
    big_h, big_w = shape[0] + pad, shape[1] + pad
    fy = np.fft.fftfreq(big_h)[:, None]
    fx = np.fft.rfftfreq(big_w)[None, :]
    envelope = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))
    keep = envelope > 1e-4
    coefficients = np.zeros(envelope.shape, np.complex64)
    n = int(keep.sum())
    coefficients[keep] = (rng.standard_normal(n) + 1j * rng.standard_normal(n)) * envelope[keep]
    field = fft.irfft2(coefficients, s=(big_h, big_w))[: shape[0], : shape[1]].astype(np.float32)
    return (field - field.mean()) / (field.std() + 1e-12)


def _quantile_threshold(values: np.ndarray, fraction: float) -> float:
    """The value above which `fraction` of `values` lie."""
    return float(np.quantile(values, 1.0 - fraction))


def _disk(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _scene(rng: np.random.Generator, shape: tuple[int, int], unit: float, *,
           cloud_probability: float = 0.25, force_lake: bool = False) -> dict[str, np.ndarray]:
    """One synthetic scene: class map (0 bg, 1 clean ice, 2 debris, 3 lake) and its surface values.

    `unit` is the length (in pixels) that a real 512-pixel tile spans, so structures keep their
    size relative to the tile whatever the tile size.
    """
    h, w = shape
    pixel_m = 30.0 * _REAL_TILE / unit

    def field(scale: float) -> np.ndarray:
        # Each field draws from its own child stream, so the draws of one never shift another's.
        return _smooth(rng.spawn(1)[0], shape, scale * unit, int(unit) // 2)

    # Terrain: broad massifs plus ridges, 3,500-7,000 m.
    relief = field(0.22) + 0.35 * field(0.07)
    elevation = 5200.0 + rng.uniform(-300, 300) + 750.0 * relief

    # Glaciers: above a snow line, with tongues where the perturbation pushes ice down valleys.
    ice_field = relief + 0.55 * field(0.06)
    glacier_fraction = rng.uniform(0.25, 0.5)
    glacier = ice_field > _quantile_threshold(ice_field, glacier_fraction)
    # Debris on the lowest part of the glacier (the tongues), up to a wavy debris line.
    debris_field = relief + 0.25 * field(0.04)
    debris_share = rng.uniform(0.4, 0.6)
    debris = glacier & (debris_field < np.quantile(debris_field[glacier], debris_share)) if glacier.any() \
        else np.zeros(shape, bool)
    classes = np.where(debris, 2, np.where(glacier, 1, 0)).astype(np.uint8)

    # Lakes: small, at the lower end of debris tongues (supraglacial ponds and proglacial lakes).
    n_lakes = int(rng.poisson(2.0)) + (1 if force_lake else 0)
    if debris.any() and n_lakes:
        ys, xs = np.nonzero(debris)
        low = np.argsort(elevation[ys, xs])[: max(1, len(ys) // 5)]
        for _ in range(n_lakes):
            k = low[int(rng.random() * len(low))]  # one draw whatever the size
            r = max(2.0, rng.uniform(0.015, 0.04) * unit)
            lake = _disk(shape, ys[k], xs[k], r * rng.uniform(0.7, 1.3), r * rng.uniform(0.7, 1.3))
            classes[lake] = 3
            elevation[lake] = elevation[lake].min()  # a lake surface is flat

    dy, dx = np.gradient(elevation, pixel_m)
    slope = np.degrees(np.arctan(np.hypot(dx, dy)))
    # Hill shading, sun 50 degrees up in the south-east (a Landsat morning overpass).
    zen, az = np.radians(40.0), np.radians(135.0)
    aspect = np.arctan2(-dx, dy)
    slope_rad = np.radians(slope)
    cos_i = np.cos(zen) * np.cos(slope_rad) + np.sin(zen) * np.sin(slope_rad) * np.cos(az - aspect)
    illumination = np.clip(cos_i / np.cos(zen), 0.25, 1.35)

    # Surface reflectance, mixed per pixel from end members.
    lithology = 1.0 / (1.0 + np.exp(-1.5 * field(0.05)))
    rock = lithology[..., None] * _ROCK_LIGHT + (1 - lithology[..., None]) * _ROCK_DARK
    vegetation_cover = np.clip((4700.0 - elevation) / 700.0 + 0.3 * field(0.05), 0, 0.9)
    background = rock + vegetation_cover[..., None] * (_VEGETATION - rock)
    snow = np.clip(0.5 + 0.8 * (relief - np.quantile(relief, 0.85)) + 0.4 * field(0.1), 0, 1)
    ice = snow[..., None] * _SNOW + (1 - snow[..., None]) * _BARE_ICE
    # Debris is rock from the valley walls: the same lithology, a hummocky (rougher) surface.
    texture = 1.0 + 0.12 * field(0.008)
    debris_refl = rock * texture[..., None]
    turbidity = rng.uniform(0.0, 0.4)
    water = _WATER + turbidity * np.array([0.02, 0.05, 0.05, 0.02, 0.0, 0.0], np.float32)
    surface = np.select([classes[..., None] == c for c in (1, 2, 3)], [ice, debris_refl, water], background)
    # Dirty ice: clean ice close to the debris line is darkened by a little debris.
    near_debris = np.clip(1.0 - np.abs(debris_field - np.quantile(debris_field[glacier], debris_share))
                          / 0.15, 0, 1) if glacier.any() else np.zeros(shape)
    dirty = np.where(classes == 1, 0.3 * near_debris, 0.0)[..., None]
    surface = surface + dirty * (_DEBRIS - surface)
    reflectance = surface * np.where(classes[..., None] == 3, 1.0, illumination[..., None])

    # Brightness temperature (K): lapse rate on land, debris colder than rock at the same height.
    lapse = -6.5e-3 * (elevation - 5000.0)
    land = 285.0 + lapse + 4.0 * (illumination - 1.0) + 1.5 * field(0.05)
    thermal = np.select(
        [classes == 1, classes == 2, classes == 3],
        [271.0 - 1.5 * snow + 0.5 * field(0.05),
         land - 5.0 + 1.0 * field(0.01),
         np.full(shape, 277.0 + rng.uniform(-1, 1))],
        land - 1.0 * vegetation_cover,
    )

    # Cloud on some scenes: bright in the visible and SWIR, cold.
    cloud = np.zeros(shape, np.float32)
    if rng.random() < cloud_probability:
        cover = field(0.08)
        cloud = np.clip((cover - _quantile_threshold(cover, rng.uniform(0.04, 0.12))) * 3.0, 0, 1)
        reflectance += cloud[..., None] * (_CLOUD - reflectance)
        thermal = thermal + cloud * (250.0 - thermal)

    # Sensor noise: 2% of the signal plus a floor.
    noise = rng.spawn(1)[0]
    reflectance += (0.02 * reflectance + 0.006) * noise.standard_normal(reflectance.shape, dtype=np.float32)
    np.clip(reflectance, 0.0, 1.0, out=reflectance)
    thermal = thermal + 0.5 * noise.standard_normal(shape, dtype=np.float32)
    bands = {name: reflectance[..., i].astype(np.float32) for i, name in enumerate(_OPTICAL)}
    return {"classes": classes, **bands, "thermal": thermal.astype(np.float32),
            "elevation": elevation.astype(np.float32), "slope": slope.astype(np.float32),
            "cloud": cloud.astype(np.float32), "snow": snow.astype(np.float32)}


def _index(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((a - b) / (a + b)).astype(np.float32)


def _nodata_wedge(shape: tuple[int, int], fraction: float) -> np.ndarray:
    """True in the top-left corner triangle holding about `fraction` of the pixels."""
    h, w = shape
    yy, xx = np.ogrid[:h, :w]
    return (yy / h + xx / w) < np.sqrt(2.0 * fraction)


def _hkh_patch(scene: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A scene as a 15-channel Landsat-7 HKH image (HWC float32) and its 2-channel mask (HWC uint8)."""
    s = scene
    pan = 0.35 * s["green"] + 0.35 * s["red"] + 0.30 * s["nir"]
    qa = np.full(s["classes"].shape, _QA_CLEAR, np.float32)
    qa[s["classes"] == 1] = _QA_SNOW
    qa[s["cloud"] > 0.5] = _QA_CLOUD
    high_gain = np.round(s["thermal"] * 2.0) / 2.0 + 0.2  # coarser, slightly offset
    channels = [s["blue"], s["green"], s["red"], s["nir"], s["swir1"], s["thermal"], high_gain,
                s["swir2"], pan, qa, _index(s["green"], s["nir"]), _index(s["green"], s["swir1"]),
                _index(s["nir"], s["red"]), s["elevation"], s["slope"]]
    image = np.stack(channels, axis=-1).astype(np.float32)
    mask = np.stack([s["classes"] == 1, s["classes"] == 2], axis=-1).astype(np.uint8)
    return image, mask


def _hack_bands(scene: dict[str, np.ndarray]) -> list[np.ndarray]:
    """A scene as the five GlacierHack bands (Landsat-8 B2, B3, B4, B6, B10), float32 HxW each."""
    optical = [np.clip(scene[b] * _L8_GAIN[b], 0, 1).astype(np.float32) for b in ("blue", "green", "red", "swir1")]
    return [*optical, (scene["thermal"] + _L8_THERMAL_OFFSET).astype(np.float32)]


def _write_hkh(root: Path, rng: np.random.Generator, tile: int, n_patches: int) -> None:
    folder = root / "patches"
    folder.mkdir(parents=True, exist_ok=True)
    written, scene_id = 0, 0
    while written < n_patches:
        count = min(_PATCHES_PER_SCENE, n_patches - written)
        rows, cols = (1, count) if count < 4 else (2, -(-count // 2))
        scene = _scene(rng, (rows * tile, cols * tile), float(tile), cloud_probability=0.4)
        image, mask = _hkh_patch(scene)
        nodata = _nodata_wedge(scene["classes"].shape, 0.05)
        image[nodata] = np.nan
        image[nodata, HKH_CHANNEL_IDS.index("BQA")] = _QA_NODATA  # the QA band flags fill, it is not NaN
        mask[nodata] = 0
        for k in range(count):
            r, c = divmod(k, cols)
            window = (slice(r * tile, (r + 1) * tile), slice(c * tile, (c + 1) * tile))
            np.save(folder / f"slice_{scene_id}_img_{k:03d}.npy", np.ascontiguousarray(image[window]))
            np.save(folder / f"slice_{scene_id}_mask_{k:03d}.npy", np.ascontiguousarray(mask[window]))
        written += count
        scene_id += 1


def _write_hack(root: Path, rng: np.random.Generator, tile: int, n_train: int, n_test: int) -> None:
    import tifffile

    for split in ("Train", "Test"):
        for band in HACK_BAND_IDS:
            (root / split / band).mkdir(parents=True, exist_ok=True)
    (root / "Train" / "labels").mkdir(parents=True, exist_ok=True)
    (root / "solution").mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(n_train + n_test)))
    for i in range(n_train + n_test):
        train = i < n_train
        name = f"img{i + 1:0{width}d}.tif"
        # Tiles 0-3 of the training set always hold a lake, so every class is present in training.
        scene = _scene(rng, (tile, tile), float(tile), force_lake=i < 4)
        bands = _hack_bands(scene)
        if train and i == 3:
            nodata = _nodata_wedge((tile, tile), 0.08)
            for band in bands:
                band[nodata] = np.nan
            scene["classes"][nodata] = 0
        split = "Train" if train else "Test"
        for folder, band in zip(HACK_BAND_IDS, bands):
            tifffile.imwrite(root / split / folder / name, band)
        label = np.asarray(LABEL_VALUES, np.uint8)[scene["classes"]]
        tifffile.imwrite(root / ("Train/labels" if train else "solution") / name, label)


def make_glacier_demo(
    out: str | Path,
    *,
    seed: int = 0,
    tile_size: int = 512,
    n_patches: int = 32,
    n_train: int = 25,
    n_test: int = 10,
) -> Path:
    """Write the glacier demo (HKH patches under `out/hkh`, GlacierHack tiles under `out/glacierhack`).

    Defaults: 32 HKH patches in 4 scenes, 25 training and 10 test GlacierHack tiles, 512 pixels a
    side (about 700 MB); `tile_size=64` writes the same scenes in about 12 MB. `n_train` is at
    least 4: the first four training tiles always hold a lake, so every class is in training.
    """
    _check_int("tile_size", tile_size, 32, 2048)
    _check_int("n_patches", n_patches, 1, 10_000)
    _check_int("n_train", n_train, 4, 10_000)
    _check_int("n_test", n_test, 1, 10_000)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer.")
    out = Path(out)
    hkh_rng, hack_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    _write_hkh(out / "hkh", hkh_rng, tile_size, n_patches)
    _write_hack(out / "glacierhack", hack_rng, tile_size, n_train, n_test)
    return out
