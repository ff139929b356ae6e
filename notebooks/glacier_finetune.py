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
# # Glacier segmentation, step 2: fine-tune on GlacierHack tiles and export the code package
#
# GlacierHack layout: `Train/Band1..Band5/imgNNN.tif` (single-band float32: Landsat-8 B2 blue, B3 green,
# B4 red, B6 SWIR1, B10 thermal) and `Train/labels/imgNNN.tif` (uint8: 0 background, 85 glacier,
# 170 debris, 255 lake). The metric is the Matthews correlation over all pixels.
#
# The submission is a **code package**: `solution.py`, defining `maskgeration(imagepath, out_dir)`,
# and `model.pth` (at most 300 MB), in `OUTPUT_DIR/package`. The *Verify the package* step runs it
# in a fresh Python process on tiles that no model trained on and checks every mask it writes.
#
# **How to use it**
# - *Kaggle*: fork, attach the GlacierHack data and (optionally) the `glacier_pretrain` output; run all.
#   Without data it runs on a generated demo.
# - *papermill / CLI*: `kagglekit run glacier_finetune --data GLACIERHACK --out OUT --budget 1h`.
#
# Re-running with the same `OUTPUT_DIR` keeps finished folds and resumes an interrupted one exactly.

# %% tags=["parameters"]
DATA_DIR = None          # GlacierHack folder (holding Train); None: find it under /kaggle/input, else a demo
OUTPUT_DIR = None        # None: the platform's run dir (Drive on Colab, /kaggle/working on Kaggle, ./runs)
BUDGET = None            # time for the whole run, e.g. "45m" or "2h"; None: what the platform allows
SEED = 42
RUN_NAME = "glacier_finetune"
RESUME_FROM = None       # "owner/notebook-slug": continue the run saved in that notebook's last output (Kaggle API)
PRETRAINED = None        # glacier_pretrain output (file or folder); None: search for it; "none": from scratch
ENCODER = "resnet34"     # any segmentation_models_pytorch encoder (must match the pretrained one)
WEIGHTS = "auto"         # ImageNet encoder weights when there is no pretrain file: "auto" (attached, else hub if online, else random), None, or a file
DEMO_TILE_SIZE = 64      # tile side of the generated demo (real tiles are 512)
HOLDOUT = 3              # labelled tiles kept out of training, to check the package and its MCC
CROP = 256               # training crop side (tiles smaller than this are used whole)
SAMPLES_PER_EPOCH = 256  # training crops per epoch
BALANCE = 0.5            # crop centres drawn by class frequency to the power minus BALANCE (0 uniform, 1 balanced)
BATCH_SIZE = 8
EPOCHS = 30              # upper bound per fold; the budget may plan fewer
MIN_EPOCHS = 8           # if fewer epochs than this would fit per fold, train fewer folds instead
LR = 1e-3                # peak of the one-cycle schedule
WEIGHT_DECAY = 1e-4
FOCAL = 1.0              # weight of the focal loss
DICE = 1.0               # weight of the dice loss
BOUNDARY = 0.5           # weight of the boundary loss once ramped in
BOUNDARY_RAMP = 5        # epochs over which the boundary term grows from zero
FOLDS = 5                # K-fold over tiles; the split is saved once in OUTPUT_DIR/folds.csv
TRAIN_FOLDS = None       # train only the first N folds (None: all)
SEEDS = 1                # models per fold, each with its own seed (the package averages all)
TTA = "flips"            # test-time augmentation in the package: none, flips, or d4 (flips and rotations)
WINDOW = 512             # sliding-window side at inference (a multiple of 32)
OVERLAP = 64             # overlap of neighbouring windows, blended
PATIENCE = None          # stop a fold after this many epochs without improvement (None: never)
CHECKPOINT_EVERY = "3m"  # full-state checkpoint cadence (also at every epoch end and on SIGTERM)
FOLDS_PER_SESSION = None # train at most this many unfinished folds per run (None: all)
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
from kagglekit_nb.tasks.glacier import finetune as task

kk.ui.form(globals(), config=task.Config, choices={"TTA": list(task.TTA_CHOICES)})

# %% [markdown]
# ## Setup
# Every notebook of the kit runs the same steps, each one call into its task module:
# `start` → `load` → `make_folds` → `train` → `predict` → `write_submission` → `finish` → `plot_results`.
#
# `start` seeds every RNG from `SEED`, resolves the time budget (counted from the kernel's start) and
# the output folder, and picks the device. A GPU that is present but unused is reported loudly.

# %%
import kagglekit_nb as kk
from kagglekit_nb.tasks.glacier import finetune as task

cfg = task.Config.from_namespace(globals())
run = task.start(cfg)

# %% [markdown]
# ## Load the tiles
# Band folders are found by name (`band1`, `Band_1` …); each band keeps its physical name (blue,
# green, red, swir1, thermal), which is how the pretrained first layer is mapped onto them.

# %%
data = task.load(cfg, run)

# %% [markdown]
# ## Folds and the held-out tiles
# `HOLDOUT` labelled tiles are set aside before the K-fold split (every class stays in training);
# no model trains on them, and the package is checked on them at the end. Written once to `folds.csv`.

# %%
folds = task.make_folds(data, cfg, run)
folds.value_counts().sort_index().rename("tiles per fold (-1: held out)")

# %% [markdown]
# ## Train
# First the pretrained weights are looked up (`PRETRAINED`, else `glacier_pretrained.pth` under the
# inputs or next to this run); their first layer is mapped onto these bands by physical name, and
# without them the model trains from scratch (and says so). Statistics come from each fold's training
# tiles only; class-balanced crops with flips and rotations; focal + dice + a boundary term ramped in;
# the fold's score is the pixel MCC of its validation tiles. The budget plans epochs × folds and keeps
# time to export and check the package.

# %%
models = task.train(data, folds, cfg, run)
models.table()

# %% [markdown]
# ## Predict: the ensemble the package holds
# The graders run the submission themselves, so this step gathers what `solution.py` will predict
# with: every trained fold (its best epoch, else its last checkpoint) with its own band statistics.

# %%
preds = task.predict(data, models, cfg, run)

# %% [markdown]
# ## Write the code package
# `OUTPUT_DIR/package` gets `model.pth` (at most 300 MB) and `solution.py`, which averages the fold
# models over the TTA views with sliding-window inference. Without a trained model it is the
# NDSI-threshold package.

# %%
path = task.write_submission(data, preds, cfg, run)

# %% [markdown]
# ## Verify the package
# `solution.py` runs in a fresh Python process on the held-out tiles. Every mask is checked (file
# names as in Band1, uint8, values 0/85/170/255, shape); the MCC is reported next to the NDSI-threshold
# baseline on the same tiles. A broken package is replaced by the NDSI package and this cell fails.

# %%
report = task.finish(data, path, cfg, run)
print(report)

# %% [markdown]
# ## Plots
# Saved in `OUTPUT_DIR/plots/` and shown here: the loss and the validation MCC of each fold by epoch,
# what each phase took against the budget, and the held-out tiles (red/green/blue) next to their true
# masks and the masks the package wrote for them.

# %%
figures = task.plot_results(run, data, models, folds)
