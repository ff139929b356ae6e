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
# # Image classification — timm + albumentations, K-fold, verified submission
#
# A template for Kaggle image competitions, read as Kaggle publishes them: a labels CSV under any name
# (`train.csv`, `train_labels.csv`, `labels.csv`, ...), one folder per class, labels in the file names, or
# pixels in CSV rows; images in any folder, in archives (`train.zip`, `.7z`, `.tar.gz`) or as DICOM. The
# sample submission decides what is written: one label, P(positive), one probability per class, multi-label
# probabilities or labels, or the top k labels. The load step prints how it read your competition and the
# parameter that overrides each guess (`kagglekit inspect DATA_DIR` prints the same without training).
#
# **How to use it**
# - *Kaggle*: fork, attach the competition (the data is found under `/kaggle/input` by itself),
#   set the parameters below, run all. With no competition attached it runs on a bundled demo.
# - *papermill / CLI*: `kagglekit run classification --data DIR --out OUT --budget 30m -p EPOCHS 20`.
# - *Colab*: outputs go to Google Drive when it can be mounted, so a disconnect loses nothing.
#
# Re-running with the same `OUTPUT_DIR` keeps the folds that are already trained.
# Every step below is one call into `kagglekit_nb`; the logic lives (and is tested) there.

# %% tags=["parameters"]
DATA_DIR = None          # competition folder; None: find it under /kaggle/input, else the bundled demo
OUTPUT_DIR = None        # None: the platform's run dir (Drive on Colab, /kaggle/working on Kaggle, ./runs)
BUDGET = None            # time for the whole run, e.g. "45m" or "2h"; None: what the platform allows
SEED = 42                # one seed for python, numpy, torch, folds and loaders
RUN_NAME = "classification"
RESUME_FROM = None       # "owner/notebook-slug": continue the run saved in that notebook's last output (Kaggle API)
MODEL = "auto"           # "auto": the strongest model of the ladder that fits the budget; or any timm model name
WEIGHTS = "auto"         # "auto": attached weights, else the hub if online, else random (a warning); None: random; or a file
IMG_SIZE = None          # images are resized to IMG_SIZE x IMG_SIZE; None: the size of the chosen ladder rung
EPOCHS = None            # None: as many epochs per fold as the budget allows (at most 100); a number caps it
MIN_EPOCHS = 3           # if fewer epochs than this would fit per fold, train fewer folds instead
BATCH_SIZE = 64
LR = 3e-3                # peak of the one-cycle schedule
WEIGHT_DECAY = 1e-4
LABEL_SMOOTHING = 0.0
FOLDS = 5                # stratified K-fold; the split is saved once in OUTPUT_DIR/folds.csv
TRAIN_FOLDS = None       # train only the first N folds (None: all)
METRIC = None            # None: the competition's metric (from `kagglekit download`), else the target's default
HFLIP = False            # horizontal-flip augmentation (wrong for digits and text)
TTA = "none"             # test-time augmentation: none, hflip, vflip, hvflip
PATIENCE = None          # stop a fold after this many epochs without improvement (None: never)
CHECKPOINT_EVERY = "3m"  # full-state checkpoint cadence (also at every epoch end and on SIGTERM)
FOLDS_PER_SESSION = None # train at most this many unfinished folds per run (None: all)
LABEL_COLUMN = None      # None: named like the sample's target, its class columns, or the column of their names
LABELS_FILE = None       # None: the CSV with the id column and a label column (train.csv, train_labels.csv, ...)
IMAGE_DIR = None         # None: training images found by id anywhere under DATA_DIR; or their folder
TEST_IMAGE_DIR = None    # None: test images found by id; or their folder
SAMPLE_FILE = None       # None: sample_submission.csv, or the one file named like it
TARGET = None            # None: detected; label, binary_proba, class_proba, multilabel_proba, label_list or topk
TEST_ROWS = None         # code competitions: the hidden test set's size, so prediction time is kept for all of it
CHECK_IMAGES = False     # decode every image at load; unreadable ones are skipped (and listed) either way
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
from kagglekit_nb.tasks import classification as task

kk.ui.form(globals(), config=task.Config, choices={"TTA": task.TTA_CHOICES, "METRIC": kk.metrics.METRICS})

# %% [markdown]
# ## Setup
# Every notebook of the kit runs the same steps, each one call into its task module:
# `start` → `load` → `make_folds` → `train` → `predict` → `write_submission` → `finish` → `plot_results`.
#
# `start` seeds every RNG from `SEED`, resolves the time budget (counted from the kernel's start) and
# the output folder, and picks the device. A GPU that is present but unused is reported loudly.

# %%
import kagglekit_nb as kk
from kagglekit_nb.tasks import classification as task

cfg = task.Config.from_namespace(globals())
run = task.start(cfg)

# %% [markdown]
# ## Load the competition's files
# The sample submission's first column is the id, the others the target. The log shows a table of how
# the kit read this competition — labels file and column, target kind, classes, image folders and format,
# the metric, what it will write — with the parameter that overrides each decision. Archives are extracted
# once into a scratch folder (never into the read-only input). The sample's own values are written as
# the emergency submission first, then the training prior: a later failure still leaves a valid file.
# The label encoder is saved with the run (`labels.json`) so every later session uses the same classes.

# %%
data = task.load(cfg, run)
data.train.head()

# %% [markdown]
# ## Folds
# Stratified K-fold, written once to `folds.csv` and reused by every later session, so a resumed
# run never trains a fold's model on another fold's validation images.

# %%
folds = task.make_folds(data, cfg, run)
folds.value_counts().sort_index().rename("validation images per fold")

# %% [markdown]
# ## Train
# First a classical stage (seconds): every image downsized to 16x16 pixels, a scikit-learn SVM fit on
# the same folds. Its out-of-fold score is the bar the deep model must beat, and its predictions
# replace the emergency baseline as soon as they beat the class prior. Reading every image also
# finds unreadable ones: they are skipped and listed in `run.json` (more than 0.5% is an error).
#
# Then the deep model. With `MODEL = "auto"` a smoke step times one batch of each rung of a short ladder
# (resnet18 at 32 px up to convnext_tiny at 224 px), cheapest first, and the strongest rung whose folds ×
# epochs fit the time left is trained; the table in the log says why. An earlier session's choice is kept,
# so a resumed run never switches models. The plan then fits epochs × folds into the budget (with
# `EPOCHS = None`, as many epochs as fit, the one-cycle schedule built for them) while keeping a reserve
# for prediction and verification. Augmentation is applied to training images only;
# the normalisation comes from the model's own config and is saved with each fold's model.
#
# With two GPUs (Kaggle's T4 x 2) `DEVICES = None` trains on both: this cell starts one process per GPU
# with `torchrun` (DistributedDataParallel; `BATCH_SIZE` is shared between them) and shows the output of
# the first. The next cells predict on one GPU from the fold models the processes saved.

# %%
models = task.train(data, folds, cfg, run)
models.table()

# %% [markdown]
# ## Predict the test set
# Every fold model that exists (its best epoch, else the last checkpoint of an interrupted fold)
# predicts the test images (eval mode, no gradients, unshuffled loader); the probabilities are
# averaged over folds and test-time augmentations. Then the candidates are compared out of fold by
# `METRIC`: the class prior, the classical stage, the deep model and their blend; the best is submitted.

# %%
preds = task.predict(data, models, cfg, run)

# %% [markdown]
# ## Write the submission
# The submission copies ids and row order from the sample submission and follows its format (one
# label column, or one probability column per class). It is verified before it replaces the file
# already there (the emergency baseline written at load, or the classical stage's). If the class
# prior won, the emergency baseline is written instead.

# %%
path = task.write_submission(data, preds, cfg, run)

# %% [markdown]
# ## Verify the submission
# Columns, ids, values and labels are checked against the sample; the report goes to
# `verification.json` and the run's record to `run.json`. If the file were invalid, the emergency
# baseline is written instead and this cell fails with the reasons. The table shows each candidate's
# out-of-fold score and which one was submitted.

# %%
report = task.finish(data, path, cfg, run)
print(report)
task.candidates(run)

# %% [markdown]
# ## Plots
# Saved in `OUTPUT_DIR/plots/` and shown here:
# - *training curves*: the loss (training solid, validation dashed) and the validation score of
#   each fold by epoch; a validation loss that rises while the training loss falls is overfitting
#   (fewer epochs, more augmentation, a smaller LR);
# - *time*: what each phase took against the budget, and how much of it was left unused;
# - *confusion matrix* of the out-of-fold predictions: which classes the model confuses.
#
# A plot whose data does not exist yet (no epoch finished) is skipped with a note.

# %%
figures = task.plot_results(run, data, models, folds)
