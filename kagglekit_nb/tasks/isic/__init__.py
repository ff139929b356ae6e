"""ISIC 2024 skin-lesion detection: the notebook's task module and its building blocks.

    from kagglekit_nb.tasks.isic import pipeline as task   # notebooks/isic_embed_lgbm.ipynb

| module | holds |
|---|---|
| `data` | the competition's columns, metadata reading, per-process HDF5 image reading, leak-proof tabular features, `Competition` |
| `embeddings` | timm embeddings of every image, cached in atomic chunks, resumable |
| `finetune` | optional per-fold fine-tuning: out-of-fold image scores |
| `features` | the feature tables: tabular + patient-normalised image features |
| `lgbm` | LightGBM (tabular, image, combined) x seeds x folds inside the budget; the OOF pAUC |
| `pipeline` | the task verbs the notebook calls (see `kagglekit_nb.tasks`) |

The data building blocks are re-exported here.
"""
from .data import (
    CATEGORICAL_COLUMNS,
    ENGINEERED_FEATURES,
    ID_COLUMNS,
    NUMERIC_COLUMNS,
    TEST_COLUMNS,
    TRAIN_COLUMNS,
    TRAIN_ONLY_COLUMNS,
    Competition,
    HDF5Images,
    ResizeToTensor,
    collate_skip_none,
    make_features,
    read_metadata,
)

__all__ = [
    "CATEGORICAL_COLUMNS",
    "ENGINEERED_FEATURES",
    "ID_COLUMNS",
    "NUMERIC_COLUMNS",
    "TEST_COLUMNS",
    "TRAIN_COLUMNS",
    "TRAIN_ONLY_COLUMNS",
    "Competition",
    "HDF5Images",
    "ResizeToTensor",
    "collate_skip_none",
    "make_features",
    "read_metadata",
]
