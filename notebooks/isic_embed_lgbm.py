# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # ISIC 2024 — image embeddings + tabular features → LightGBM, verified submission
#
# A template for the ISIC 2024 skin-lesion challenge (and competitions in its layout):
# `train-metadata.csv`, `test-metadata.csv`, `train-image.hdf5` / `test-image.hdf5` (one JPEG per
# `isic_id`) and `sample_submission.csv` (`isic_id,target`). The metric is the partial AUC above
# 80% true-positive rate (0 to 0.2).
#
# **How to use it**
# - *Kaggle*: fork, attach the competition (found under `/kaggle/input` by itself) and run all. Good
#   image features need pretrained weights: `WEIGHTS = "auto"` finds them attached by model name, or
#   downloads them when internet is on (else random weights, with a warning that says how to attach
#   them). With no competition attached it runs on a bundled synthetic demo.
# - *papermill / CLI*: `kagglekit run isic --data DIR --out OUT --budget 30m -p LGBM_SEEDS 5`.
# - *Colab*: outputs go to Google Drive when it can be mounted, so a disconnect loses nothing.
#
# Re-running with the same `OUTPUT_DIR` reuses the folds, the cached embeddings (an interrupted
# extraction continues from its last finished chunk) and every LightGBM fit whose inputs are unchanged.
# Every step below is one call into `kagglekit_nb`; the logic lives (and is tested) there.

# %% tags=["parameters"]
DATA_DIR = None          # competition folder; None: find it under /kaggle/input, else the bundled demo
OUTPUT_DIR = None        # None: the platform's run dir (Drive on Colab, /kaggle/working on Kaggle, ./runs)
BUDGET = None            # time for the whole run, e.g. "45m" or "2h"; None: what the platform allows
SEED = 42                # one seed for python, numpy, torch, folds, random weights and LightGBM
RUN_NAME = "isic"
RESUME_FROM = None       # "owner/notebook-slug": continue the run saved in that notebook's last output (Kaggle API)
MODEL = "resnet18"       # timm backbone of the image embeddings
WEIGHTS = "auto"         # "auto": attached weights, else the hub if online, else random (a warning); None: random; or a file
IMG_SIZE = 64            # images are resized to IMG_SIZE x IMG_SIZE
BATCH_SIZE = 128
EMBED_CHUNK = 1024       # images per embedding cache file (the most an interrupted extraction loses)
EMBED_SHARE = 0.5        # at most this share of the time left goes to the embeddings; the rest to LightGBM
IMAGE_PCA = 32           # PCA components of the patient-normalised embeddings; 0: no embeddings
ON_BAD_IMAGE = "raise"   # a missing or corrupt image: raise (naming its isic_id) or skip (reported)
TEST_ROWS = None         # the hidden test set's size (ISIC 2024 shows 3 rows; its rerun scores ~500,000), so time is kept for all of them
FOLDS = 5                # StratifiedGroupKFold by patient_id, saved once in OUTPUT_DIR/folds.csv
LGBM_SEEDS = 3           # LightGBM seeds per fold; the budget may fit fewer
NEG_PER_POS = 20         # negatives kept per positive in each training fold; None: all, with scale_pos_weight
LEARNING_RATE = 0.03
NUM_LEAVES = 15
MAX_ROUNDS = 1000        # boosting rounds at most
EARLY_STOPPING = 100     # stop after this many rounds without a better validation AUC
SUBMIT = "combined"      # whose predictions are submitted: tabular, image, combined or best (by OOF pAUC)
FINETUNE = False         # also fine-tune the backbone per fold (out-of-fold image scores; slow on a CPU)
FINETUNE_EPOCHS = 2
FINETUNE_LR = 1e-3
FINETUNE_NEG_PER_POS = 4 # balanced sampling: negatives per positive in each fine-tuning epoch
NUM_WORKERS = None       # DataLoader workers; None: automatic
DEVICES = None           # embedding processes; None: every visible GPU (one GPU or none: one process); 1; 2; "cpu:2": two CPU processes
DEVICE = None            # None: CUDA when available, else CPU

# %%
# Make kagglekit_nb importable: the installed kit, else the wheels dataset made by `kagglekit bundle`
# (attach it when internet is off), else the package index.
import glob, importlib.util, os, subprocess, sys
_kaggle_input = "/kaggle/input"
if importlib.util.find_spec("kagglekit_nb") is None:
    _wheels = sorted(glob.glob(f"{_kaggle_input}/*/kagglekit_nb-*.whl") + glob.glob(f"{_kaggle_input}/*/*/kagglekit_nb-*.whl")
                     + glob.glob(f"{_kaggle_input}/*/*/*/kagglekit_nb-*.whl"))
    _source = ["--no-index", "--find-links", os.path.dirname(_wheels[-1])] if _wheels else []
    print("installing kagglekit_nb from", _source[-1] if _source else "the package index")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *_source, "kagglekit_nb"], check=True)
    importlib.invalidate_caches()

# %% [markdown]
# ## Edit the parameters in a form (optional)
# With the notebook open (Kaggle editor, Colab, Jupyter) the next cell shows the parameters above as
# a form: change values, click *Apply*, then run the cells from *Setup* on. *Run all* uses the
# parameters cell as it is, and batch runs (papermill, a saved Kaggle version) show no form at all.

# %%
import kagglekit_nb as kk
from kagglekit_nb.tasks.isic import pipeline as task

kk.ui.form(globals(), config=task.Config,
           choices={"SUBMIT": task.SUBMIT_CHOICES, "ON_BAD_IMAGE": task.ON_BAD_IMAGE_CHOICES})

# %% [markdown]
# ## Setup
# Every notebook of the kit runs the same steps, each one call into its task module:
# `start` → `load` → `make_folds` → `train` → `predict` → `write_submission` → `finish` → `plot_results`.
#
# `start` seeds every RNG from `SEED`, resolves the time budget (counted from the kernel's start) and
# the output folder, and picks the device. A GPU that is present but unused is reported loudly.

# %%
import kagglekit_nb as kk
from kagglekit_nb.tasks.isic import pipeline as task

cfg = task.Config.from_namespace(globals())
run = task.start(cfg)

# %% [markdown]
# ## Load the competition's files
# Test rows follow the order of `sample_submission.csv`. The 11 train-only columns (`target`,
# `lesion_id`, `iddx_*`, `mel_*`, `tbp_lv_dnn_lesion_confidence`) are never used as features.

# %%
data = task.load(cfg, run)
data.train[["isic_id", "patient_id", "target", "age_approx", "clin_size_long_diam_mm"]].head()

# %% [markdown]
# ## Folds
# StratifiedGroupKFold by `patient_id`: a patient's lesions are all in one fold, so validation
# never sees a patient the model trained on. Written once to `folds.csv` and reused by every session.

# %%
folds = task.make_folds(data, cfg, run)
folds.value_counts().sort_index().rename("validation lesions per fold")

# %% [markdown]
# ## Train: embeddings, (fine-tuning), features, LightGBM
# 1. *Image embeddings*: pooled features of the timm backbone for every image, batched (mixed
#    precision on a GPU), cached under `OUTPUT_DIR/embeddings/<model>-<size>px-<weights>/` in chunks
#    written atomically. Test images come first; the extraction stops when `EMBED_SHARE` of the
#    time left is spent, and a rerun continues where it stopped. With two GPUs (Kaggle's T4 x 2)
#    `DEVICES = None` starts one process per GPU, each embedding every other chunk; the steps after
#    it run here, on the chunks read back from the cache.
# 2. *Fine-tuning* (optional, `FINETUNE`): one model per fold with balanced sampling; each training
#    lesion's image score comes from the model of its own fold, which never trained on it.
# 3. *Features*: the raw `tbp_lv_*` measurements, ratios and contrasts of them, per-patient z-scores
#    ("ugly duckling": how a lesion differs from the same patient's other lesions), lesion counts per
#    patient and the categorical columns; the embeddings z-scored per patient, reduced by a PCA
#    fitted on train.
# 4. *LightGBM*, tabular-only, image-only and combined: for each seed and fold, negatives
#    down-sampled in the training folds, early stopping on the validation fold. The fits stop when
#    the next one would eat into the time kept for predicting and verifying.
#
# The table shows each model's out-of-fold pAUC: predictions averaged over seeds, then ranked within
# their fold (each fold's models have their own calibration) and scored together.

# %%
models = task.train(data, folds, cfg, run)
models.table()

# %% [markdown]
# ## Predict the test set
# The `SUBMIT` model's test predictions, averaged over every fold and seed that was fitted.

# %%
preds = task.predict(data, models, cfg, run)

# %% [markdown]
# ## Write the submission
# `isic_id,target` in the sample's row order; if no LightGBM model was fitted, the emergency baseline
# (the training positive rate) is written instead.

# %%
path = task.write_submission(data, preds, cfg, run)

# %% [markdown]
# ## Verify the submission
# The file is checked against the sample submission; the report goes to `verification.json` and the
# run's record to `run.json`. If it were invalid, the emergency baseline is written instead and this
# cell fails with the reasons.

# %%
report = task.finish(data, path, cfg, run)
print(report)

# %% [markdown]
# ## Plots
# Saved in `OUTPUT_DIR/plots/` and shown here: what each phase took against the budget, and the ROC
# curve of each model's out-of-fold predictions with the scored region (TPR above 80%) shaded.

# %%
figures = task.plot_results(run, data, models, folds)
