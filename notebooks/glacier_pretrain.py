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
# # Glacier segmentation, step 1: pretrain a U-Net on HKH-style Landsat-7 patches
#
# Trains a segmentation-models-pytorch U-Net on `*_img_NNN.npy` patches (15 channels: Landsat-7
# B1–B8 and QA, NDWI/NDSI/NDVI, elevation, slope) with their `*_mask_NNN.npy` clean-ice and debris
# masks, and saves the weights **with their band names and normalisation statistics** in
# `glacier_pretrained.pth`. The fine-tune notebook (`glacier_finetune`) maps the first layer onto its
# own bands by physical name (Landsat-7 B2 and Landsat-8 B3 are both "green"), so a band the
# pretraining never saw starts from a sensible kernel instead of noise.
#
# **How to use it**
# - *Kaggle*: fork, attach the HKH patches as a dataset (found under `/kaggle/input` by itself), run all;
#   then attach this notebook's output to the fine-tune notebook. Without data it runs on a generated demo.
# - *papermill / CLI*: `kagglekit run glacier_pretrain --data PATCHES --out OUT --budget 1h`.
#
# Re-running with the same `OUTPUT_DIR` resumes: a killed run continues from its last checkpoint.

# %% tags=["parameters"]
DATA_DIR = None          # folder of HKH patches; None: find it under /kaggle/input, else a generated demo
OUTPUT_DIR = None        # None: the platform's run dir (Drive on Colab, /kaggle/working on Kaggle, ./runs)
BUDGET = None            # time for the whole run, e.g. "45m" or "2h"; None: what the platform allows
SEED = 42
RUN_NAME = "glacier_pretrain"
RESUME_FROM = None       # "owner/notebook-slug": continue the run saved in that notebook's last output (Kaggle API)
ENCODER = "resnet34"     # any segmentation_models_pytorch encoder
WEIGHTS = "auto"         # ImageNet encoder weights: "auto" (attached, else hub if online, else random + warning), None: random, or a file
BANDS = None             # comma-separated physical band names, e.g. "blue,green,red,swir1,thermal"; None: all 15
MAX_PATCHES = 500        # patches used, in file order (None: all); the masks are held in memory
DEMO_TILE_SIZE = 64      # patch side of the generated demo (real patches are 512)
CROP = 256               # training crop side (tiles smaller than this are used whole)
SAMPLES_PER_EPOCH = 256  # training crops per epoch
BALANCE = 0.5            # crop centres drawn by class frequency to the power minus BALANCE (0 uniform, 1 balanced)
BATCH_SIZE = 8
EPOCHS = 30              # upper bound; the budget may plan fewer
MIN_EPOCHS = 8           # if fewer epochs than this would fit per fold, train fewer folds instead
LR = 1e-3                # peak of the one-cycle schedule
WEIGHT_DECAY = 1e-4
FOCAL = 1.0              # weight of the focal loss
DICE = 1.0               # weight of the dice loss
BOUNDARY = 0.5           # weight of the boundary loss once ramped in
BOUNDARY_RAMP = 5        # epochs over which the boundary term grows from zero
FOLDS = 5                # folds over scenes (patches of one scene stay together)
TRAIN_FOLDS = 1          # pretraining needs one model: fold 0 validates it
SEEDS = 1
PATIENCE = None          # stop after this many epochs without improvement (None: never)
CHECKPOINT_EVERY = "3m"  # full-state checkpoint cadence (also at every epoch end and on SIGTERM)
FOLDS_PER_SESSION = None
NUM_WORKERS = None       # DataLoader workers; None: automatic
DEVICES = None           # training processes; None: every visible GPU (one GPU or none: one process); 1; 2; "cpu:2": two CPU processes
SYNC_BN = False          # several GPUs: BatchNorm statistics over the whole batch (for small batches per GPU)
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
from kagglekit_nb.tasks.glacier import pretrain as task

kk.ui.form(globals(), config=task.Config)

# %% [markdown]
# ## Setup
# Every notebook of the kit runs the same steps, each one call into its task module:
# `start` → `load` → `make_folds` → `train` → `predict` → `write_submission` → `finish` → `plot_results`.
#
# `start` seeds every RNG from `SEED`, resolves the time budget (counted from the kernel's start) and
# the output folder, and picks the device. A GPU that is present but unused is reported loudly.

# %%
import kagglekit_nb as kk
from kagglekit_nb.tasks.glacier import pretrain as task

cfg = task.Config.from_namespace(globals())
run = task.start(cfg)

# %% [markdown]
# ## Load the patches
# Channels are picked by physical band name. The masks are read once; the images are read through a
# memory map, crop by crop.

# %%
data = task.load(cfg, run)

# %% [markdown]
# ## Folds
# Patches of one scene overlap in space, so folds are grouped by scene; the split is written once to
# `folds.csv`. Pretraining needs one model: fold 0 (`TRAIN_FOLDS = 1`) validates it.

# %%
folds = task.make_folds(data, cfg, run)
folds.value_counts().sort_index().rename("patches per fold")

# %% [markdown]
# ## Train
# Per-band statistics come from the training fold only. Crops are centred on pixels drawn by class
# frequency (debris is rare), flipped and rotated; the loss is focal + dice with a boundary term that
# ramps in over the first epochs. The budget plans the epochs and keeps time to save and check the
# weights; checkpoints hold the whole training state, so a killed run resumes exactly.

# %%
models = task.train(data, folds, cfg, run)
models.table()

# %% [markdown]
# ## Predict: the weights to hand on
# Pretraining has no test set: what it "predicts" is the model the fine-tune starts from, the best
# epoch of the trained model (else its last checkpoint), with its band names and statistics.

# %%
preds = task.predict(data, models, cfg, run)

# %% [markdown]
# ## Write the pretrained weights
# Saved as `OUTPUT_DIR/glacier_pretrained.pth`: the weights, the physical band names of their input
# channels and the training statistics. The fine-tune finds this file by itself (or via `PRETRAINED`).

# %%
path = task.write_submission(data, preds, cfg, run)

# %% [markdown]
# ## Check the pretrained weights
# The check loads the file safely (weights only) and maps it onto the five GlacierHack bands, as the
# fine-tune will; the report goes to `verification.json`.

# %%
report = task.finish(data, path, cfg, run)
print(report)

# %% [markdown]
# ## Plots
# Saved in `OUTPUT_DIR/plots/` and shown here: the loss and the validation MCC by epoch, and what each
# phase took against the budget.

# %%
figures = task.plot_results(run, data, models, folds)
