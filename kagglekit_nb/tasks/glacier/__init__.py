"""Multispectral glacier segmentation: the two notebooks' task modules and their building blocks.

    from kagglekit_nb.tasks.glacier import pretrain as task   # notebooks/glacier_pretrain.ipynb
    from kagglekit_nb.tasks.glacier import finetune as task   # notebooks/glacier_finetune.ipynb

| module | holds |
|---|---|
| `bands` | band registry (Landsat-7/8 band ids -> physical names), tile/patch/label I/O, `BandStats` |
| `metrics` | `StreamingConfusion` (multiclass MCC), the pixel-MCC metric, the NDSI-threshold baseline |
| `crops` | `BalancedCropSampler`: class-balanced crop centres, resumable |
| `model` | the smp U-Net, first-layer transfer by band name, the focal + dice + boundary loss |
| `data` | `TileData` and the training/validation datasets |
| `training` | what both notebooks share: parameters, folds, training the ensemble |
| `pretrain`, `finetune` | the task verbs of each notebook (see `kagglekit_nb.tasks`) |
| `package` | the code-package export (`solution.py` + `model.pth`) and its check in a fresh process |
| `solution_template` | the self-contained `solution.py` (numpy, torch, smp, tifffile only) |
| `merge` | `kagglekit blend` of fine-tune runs: their fold models in one package, kept when it scores at least the best run's on the held-out tiles |

The building blocks are re-exported here; the task modules are imported by name.
"""
from .bands import (
    CLASS_NAMES,
    HACK_BANDS,
    HACK_CHANNELS,
    HKH_CHANNEL_IDS,
    HKH_CHANNELS,
    L7_BANDS,
    L8_BANDS,
    LABEL_VALUES,
    SENSORS,
    BandStats,
    encode_label,
    find_band_dirs,
    find_hkh_patches,
    list_tiles,
    physical_names,
    read_hkh_patch,
    read_label,
    read_tile,
)
from .crops import BalancedCropSampler
from .metrics import PIXEL_MCC, StreamingConfusion, ndsi_baseline
from .model import SegLoss, TransferReport, boundary_distance, build_unet, transfer_first_layer

__all__ = [
    "CLASS_NAMES",
    "HACK_BANDS",
    "HACK_CHANNELS",
    "HKH_CHANNELS",
    "HKH_CHANNEL_IDS",
    "L7_BANDS",
    "L8_BANDS",
    "LABEL_VALUES",
    "PIXEL_MCC",
    "SENSORS",
    "BalancedCropSampler",
    "BandStats",
    "SegLoss",
    "StreamingConfusion",
    "TransferReport",
    "boundary_distance",
    "build_unet",
    "encode_label",
    "find_band_dirs",
    "find_hkh_patches",
    "list_tiles",
    "ndsi_baseline",
    "physical_names",
    "read_hkh_patch",
    "read_label",
    "read_tile",
    "transfer_first_layer",
]
