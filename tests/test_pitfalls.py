"""The bugs that cost competitors their runs, one test each: the kit's way prevents or detects the
pitfall, and where it helps the naive way is shown failing next to it."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from kagglekit_nb.loaders import make_loader
from kagglekit_nb.loop import evaluate, fit, predict
from kagglekit_nb.metrics import get_metric
from kagglekit_nb.options import LoopOptions, plateau_mode
from kagglekit_nb.preflight import device_warnings, learning_check
from kagglekit_nb.repro import seed_everything
from kagglekit_nb.state import capture_state, restore_state

ACC = get_metric("accuracy")


def _blobs(n: int, seed: int, classes: int = 2, dim: int = 2) -> TensorDataset:
    """`classes` Gaussian blobs around well separated centres, balanced."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = 3.0 * torch.eye(classes, dim) if classes <= dim else 3.0 * torch.randn(classes, dim, generator=g)
    return TensorDataset(centres[y] + torch.randn(n, dim, generator=g), y)


def _loaders(train_n=64, val_n=40, batch=8, seed=0, classes=2, dim=2):
    return (make_loader(_blobs(train_n, 1, classes, dim), batch, train=True, seed=seed, num_workers=0),
            make_loader(_blobs(val_n, 2, classes, dim), 16, train=False, num_workers=0))


def _linear(seed: int = 0, dim: int = 2, classes: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(dim, classes)


def _fit(model, train_loader, val_loader, *, lr=0.5, epochs=2, opt=None, **kw):
    opt = opt or torch.optim.SGD(model.parameters(), lr=lr)
    return fit(model, train_loader, val_loader, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), epochs=epochs,
               device="cpu", metric=kw.pop("metric", ACC), log=kw.pop("log", None), **kw)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- data and evaluation hygiene


def _glacier_tiles(n: int = 7, size: int = 32):
    """Small 5-band GlacierHack tiles in memory, with a fold split: folds 0-2 and one held-out tile."""
    from kagglekit_nb.tasks.glacier.data import TileData
    from kagglekit_nb.tasks.glacier.training import FINETUNE_CLASSES, HOLDOUT_FOLD

    rng = np.random.default_rng(0)
    images = [rng.normal(10.0 * (i + 1), 1.0 + i, size=(5, size, size)).astype(np.float32) for i in range(n)]
    labels = [rng.integers(0, 4, size=(size, size)).astype(np.uint8) for _ in range(n)]
    data = TileData(names=[f"img{i:03d}.tif" for i in range(n)], labels=labels,
                    bands=["blue", "green", "red", "swir1", "thermal"], classes=FINETUNE_CLASSES,
                    groups=[f"img{i:03d}.tif" for i in range(n)], source=Path("."), images=images)
    folds = pd.Series([0, 0, 1, 1, 2, 2, HOLDOUT_FOLD][:n], name="fold")
    return data, folds


def test_pitfall_statistics_fitted_before_the_split(tmp_path):
    """Normalisation statistics fitted on every tile learn from the validation fold; the kit's fold setup
    fits them on that fold's training tiles only, saves them with the model and normalises the
    validation tiles with them."""
    from kagglekit_nb.run import start_run
    from kagglekit_nb.tasks.glacier import BandStats
    from kagglekit_nb.tasks.glacier.finetune import Config as FinetuneConfig
    from kagglekit_nb.tasks.glacier.training import _setup

    data, folds = _glacier_tiles()
    cfg = FinetuneConfig(ENCODER="resnet18", FOLDS=3, HOLDOUT=1, BATCH_SIZE=2, SAMPLES_PER_EPOCH=4, NUM_WORKERS=0)
    run = start_run(cfg.as_dict(), run_name="stats", output_dir=tmp_path / "out", budget=None, seed=0,
                    echo=lambda _m: None)
    train_tiles = [data.images[i] for i in (2, 3, 4, 5)]  # fold 0 validates on tiles 0-1; tile 6 is held out
    setup = _setup(data, folds, cfg, run, 0, None, set())
    kit = BandStats.from_dict(setup.meta["stats"])
    expected = BandStats.fit(train_tiles, data.bands)
    np.testing.assert_allclose(kit.mean, expected.mean, rtol=1e-6)
    np.testing.assert_allclose(kit.std, expected.std, rtol=1e-6)
    naive = BandStats.fit(data.images, data.bands)  # fitted on every tile, then split
    assert np.all(np.abs(naive.mean - kit.mean) > 4)  # 45 on the training tiles, 40 on all of them
    # the validation tiles reach the model normalised with the training fold's statistics
    (x, _), = [next(iter(setup.val_loader))]
    np.testing.assert_allclose(x[0].numpy(), kit.normalise(data.images[0]), rtol=1e-5, atol=1e-5)
    assert abs(float(x[0].mean())) > 1  # tile 0 is darker than the training tiles: not re-centred on itself


def test_pitfall_tuning_on_the_test_set():
    """Best epoch and early stopping come from a labelled validation fold; a test loader is refused there."""
    train_loader, val_loader = _loaders()
    test_x = _blobs(24, 3).tensors[0]
    test_loader = make_loader(TensorDataset(test_x), 8, train=False, num_workers=0)  # no labels, like a test set
    with pytest.raises(ValueError, match="is it the test loader.*never on the test set"):
        _fit(_linear(), train_loader, test_loader)
    with pytest.raises(ValueError, match="never on the test set"):
        _fit(_linear(), train_loader, test_loader, options=LoopOptions(preflight=False))
    with pytest.raises(ValueError, match="labelled validation fold"):
        evaluate(_linear(), test_loader, loss_fn=None, device="cpu", metric=ACC)
    # The kit's way: select on validation, then the test set is only predicted.
    model = _linear()
    result = _fit(model, train_loader, val_loader, epochs=3)
    scores = [h["score"] for h in result.history]
    assert result.best_epoch == scores.index(max(scores)) + 1
    assert predict(model, test_loader, device="cpu").shape == (24, 2)


def test_pitfall_train_mode_at_inference():
    """Dropout and BatchNorm in train mode make predictions random and corrupt the running statistics."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.Linear(16, 3))
    x = torch.randn(32, 4)
    loader = make_loader(TensorDataset(x), 8, train=False, num_workers=0)
    model.train()  # as left by training
    stats = _weights(model[1])
    a, b = predict(model, loader, device="cpu"), predict(model, loader, device="cpu")
    np.testing.assert_array_equal(a, b)
    assert _same(_weights(model[1]), stats)  # BatchNorm statistics untouched
    # naive: forward in train mode
    model.train()
    with torch.no_grad():
        n1, n2 = model(x), model(x)
    assert not torch.equal(n1, n2)
    assert not torch.equal(model[1].running_mean, stats["running_mean"])


class _Probe(nn.Module):
    """Records whether gradients were being tracked when it ran."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x):
        out = self.lin(x)
        self.seen.append((torch.is_grad_enabled(), out.requires_grad))
        return out


def test_pitfall_no_grad_missing_at_inference():
    """Without no_grad every inference batch builds an autograd graph (memory, speed)."""
    x, y = torch.randn(12, 3), torch.arange(12) % 3
    model = _Probe()
    loader = make_loader(TensorDataset(x, y), 4, train=False, num_workers=0)
    predict(model, loader, device="cpu")
    evaluate(model, loader, loss_fn=nn.CrossEntropyLoss(), device="cpu")
    assert len(model.seen) == 6 and all(seen == (False, False) for seen in model.seen)
    model.seen.clear()
    out = model(x)  # naive
    assert model.seen == [(True, True)] and out.grad_fn is not None


def test_pitfall_shuffled_validation_or_test_loader(tmp_path):
    """A shuffled test loader writes predictions next to the wrong ids."""
    n = 30
    onehot = torch.eye(10)[torch.arange(n) % 10] * 5  # row i predicts class i % 10
    ids_class = (np.arange(n) % 10)
    identity = nn.Linear(10, 10)
    with torch.no_grad():
        identity.weight.copy_(torch.eye(10))
        identity.bias.zero_()
    kit = make_loader(TensorDataset(onehot), 7, train=False, seed=123, num_workers=0)
    assert (predict(identity, kit, device="cpu").argmax(1) == ids_class).all()
    torch.manual_seed(0)
    naive = DataLoader(TensorDataset(onehot), batch_size=7, shuffle=True)
    assert (predict(identity, naive, device="cpu").argmax(1) == ids_class).mean() < 0.5
    with pytest.raises(ValueError, match="never split"):
        make_loader(TensorDataset(onehot), 7, train=False, distributed=True)
    # The kit's fold setup: out-of-fold predictions are written next to `val_ids`, in the validation
    # loader's order, so that loader must yield the fold's images in exactly that order, every time.
    comp, setup = _classification_fold(tmp_path)
    assert setup.val_ids == ["img0", "img5", "img10"]
    for _ in range(2):
        labels = torch.cat([y for _, y in setup.val_loader])
        assert labels.tolist() == setup.val_targets.tolist() == [0, 2, 1]


class _Augmented(Dataset):
    """Numpy-based augmentation, like albumentations: depends on numpy's global RNG."""

    def __init__(self, base: TensorDataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return x + torch.from_numpy(np.random.normal(0, 0.3, size=x.shape).astype(np.float32)), y


def test_pitfall_seeds_set_in_one_place_only():
    """Seeding torch alone leaves numpy augmentation (and python's random) unseeded: runs differ. The kit
    seeds every RNG in one call, and its train loader seeds each item's augmentation from (seed, epoch,
    index), so even a run seeded the naive way reproduces."""

    def run(seed_fn, loader_fn) -> dict[str, torch.Tensor]:
        seed_fn(7)
        model = nn.Sequential(nn.Linear(2, 8), nn.Dropout(0.2), nn.Linear(8, 2))
        train = loader_fn(_Augmented(_blobs(48, 1)))
        val = make_loader(_blobs(16, 2), 8, train=False, num_workers=0)
        _fit(model, train, val, lr=0.1, epochs=2)
        return _weights(model)

    kit = lambda ds: make_loader(ds, 8, train=True, seed=7, num_workers=0)  # noqa: E731
    naive = lambda ds: DataLoader(ds, batch_size=8, shuffle=True)  # noqa: E731 - order from torch, noise from numpy
    kit_a = run(seed_everything, kit)
    np.random.random(5)  # other cells ran in between
    assert _same(kit_a, run(seed_everything, kit))
    naive_a = run(torch.manual_seed, naive)
    np.random.random(5)
    assert not _same(naive_a, run(torch.manual_seed, naive))
    assert _same(run(torch.manual_seed, kit), run(torch.manual_seed, kit))  # the kit's loader seeds numpy per item


def _image_files(root: Path, n: int = 6, size: int = 28) -> list[str]:
    """`n` random grayscale PNGs, as a competition's image folder holds them."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(size, size), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _classification_fold(tmp_path, n: int = 12):
    """The kit's setup of fold 0 for a small image competition (resnet18, 5 folds)."""
    from kagglekit_nb.run import start_run
    from kagglekit_nb.tasks.classification import Competition, Config, _setup_fold

    paths = _image_files(tmp_path / "train", n=n)
    train = pd.DataFrame({"id": [f"img{i}" for i in range(n)], "label": np.arange(n) % 3, "path": paths})
    empty = pd.DataFrame()
    comp = Competition(data_dir=tmp_path, train=train, test=empty, sample=empty, sample_path=tmp_path / "s.csv",
                       id_col="id", target_cols=["label"], kind="label", classes=["a", "b", "c"], in_chans=1)
    cfg = Config(MODEL="resnet18", WEIGHTS=None, IMG_SIZE=24, BATCH_SIZE=2, NUM_WORKERS=0)
    run = start_run(cfg.as_dict(), run_name="fold", output_dir=tmp_path / "out", budget=None, seed=0,
                    echo=lambda _m: None)
    folds = pd.Series([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1][:n], name="fold")  # fold 0: images 0, 5, 10
    return comp, _setup_fold(comp, folds, cfg, run, 0)


def test_pitfall_albumentations_has_its_own_rng(tmp_path):
    """albumentations 2 draws from the pipeline's own generator, seeded from the OS when Compose(seed=None):
    seed_everything cannot reach it. The kit's train loader seeds its image dataset's `transform` per item."""
    from kagglekit_nb.tasks.classification import ImageDataset, transforms

    paths = _image_files(tmp_path / "train")

    def first_epoch(loader_fn) -> torch.Tensor:
        seed_everything(7)
        ds = ImageDataset(paths, np.arange(len(paths)) % 2, transforms(24, [0.5], [0.25], train=True), in_chans=1)
        return torch.cat([x for x, _ in loader_fn(ds)])

    naive = lambda ds: DataLoader(ds, batch_size=3, shuffle=True)  # noqa: E731
    assert not torch.equal(first_epoch(naive), first_epoch(naive))
    kit = lambda ds: make_loader(ds, 3, train=True, seed=7, num_workers=0)  # noqa: E731
    assert torch.equal(first_epoch(kit), first_epoch(kit))


def test_pitfall_accuracy_under_class_imbalance():
    """With 95:5 classes, predicting the majority scores 0.95 accuracy; the kit's checks see through it."""
    targets = np.array([0] * 95 + [1] * 5)
    prior_only = np.tile([0.95, 0.05], (100, 1))  # a model that learned nothing but the class frequencies
    assert get_metric("accuracy")(targets, prior_only) == pytest.approx(0.95)
    assert get_metric("balanced_accuracy")(targets, prior_only) == pytest.approx(0.5)
    assert get_metric("roc_auc")(targets, prior_only) == pytest.approx(0.5)
    nll = -np.mean(np.log(prior_only[np.arange(100), targets]))
    assert nll < 0.5 * math.log(2)  # a naive "loss below ln(C)" check would call this learning
    warning = learning_check(prior_only, targets)
    assert warning is not None and "class frequencies" in warning
    useful = np.where(targets[:, None] == np.arange(2), 0.9, 0.1)
    assert learning_check(useful, targets) is None
    assert get_metric("balanced_accuracy")(targets, useful) == 1.0


# --------------------------------------------------------------------------- the training loop


def test_pitfall_lr_too_high_gives_nan():
    """An LR that blows the loss up: the kit restores the last good state, halves the LR once, then stops loudly."""
    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))

    train_loader, val_loader = _loaders()
    model = mlp()
    start = _weights(model)
    logged: list[str] = []
    with pytest.raises(FloatingPointError, match=r"again in epoch 1, even at the halved learning rate 5e\+05"):
        _fit(model, train_loader, val_loader, lr=1e6, epochs=3, log=logged.append)
    assert _same(_weights(model), start)  # the last good state, not NaN weights
    assert any("restored the last good state" in m and "halved the learning rate to 5e+05" in m for m in logged)
    # naive: the same loop without the guard finishes "normally" with NaN weights
    naive = mlp()
    opt = torch.optim.SGD(naive.parameters(), lr=1e6)
    for _ in range(3):
        for x, y in train_loader:
            opt.zero_grad()
            F.cross_entropy(naive(x), y).backward()
            opt.step()
    assert torch.isnan(naive[0].weight).any()


class _Recording(torch.optim.SGD):
    """SGD that keeps a copy of the weight gradient it steps with."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, lr=lr)
        self.grads: list[torch.Tensor] = []

    def step(self, closure=None):
        self.grads.append(self.param_groups[0]["params"][0].grad.clone())
        return super().step(closure)


def test_pitfall_step_before_zero_grad():
    """zero_grad in the wrong place: between backward and step nothing is learned; forgotten, gradients pile up."""
    def fresh_grads(model, loader):
        out = []
        for x, y in loader:
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
            out.append(model.weight.grad.clone())
        return out

    train_loader, val_loader = _loaders(seed=4)
    model = _linear()
    start = _weights(model)
    opt = _Recording(model.parameters(), lr=0.0)  # lr 0: the same weights at every step, so grads are comparable
    _fit(model, train_loader, val_loader, epochs=1, opt=opt)
    expected = fresh_grads(_linear(), _loaders(seed=4)[0])
    assert len(opt.grads) == 8
    for got, want in zip(opt.grads, expected):
        torch.testing.assert_close(got, want)
    # naive 1: zero_grad between backward and step -> steps with zero gradients, the model never moves
    naive = _linear()
    nopt = torch.optim.SGD(naive.parameters(), lr=0.5)
    for x, y in train_loader:
        F.cross_entropy(naive(x), y).backward()
        nopt.zero_grad()
        nopt.step()
    assert _same(_weights(naive), start)
    # naive 2: zero_grad forgotten -> each step uses the sum of all gradients so far
    naive = _linear()
    nopt = _Recording(naive.parameters(), lr=0.0)
    for x, y in _loaders(seed=4)[0]:
        F.cross_entropy(naive(x), y).backward()
        nopt.step()
    torch.testing.assert_close(nopt.grads[-1], torch.stack(expected).sum(0))
    assert not torch.allclose(nopt.grads[-1], expected[-1])


def test_pitfall_augmentation_on_validation_or_test(tmp_path):
    """Validation/test transforms are deterministic: resize + normalise only."""
    from kagglekit_nb.tasks.classification import transforms

    img = np.random.default_rng(0).integers(0, 256, size=(28, 28, 1), dtype=np.uint8)
    mean, std = [0.5], [0.25]
    seed_everything(0)
    val_tf, train_tf = transforms(32, mean, std, train=False), transforms(32, mean, std, train=True)
    v1, v2 = val_tf(image=img)["image"], val_tf(image=img)["image"]
    assert torch.equal(v1, v2)
    import cv2

    resized = cv2.resize(img[:, :, 0], (32, 32), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    np.testing.assert_allclose(v1[0].numpy(), (resized / 255.0 - 0.5) / 0.25, atol=1e-5)
    augmented = [train_tf(image=img)["image"] for _ in range(6)]
    assert any(not torch.equal(augmented[0], a) for a in augmented[1:])  # training images are augmented
    # The kit's fold setup: validation batches are the resized, normalised images, the same at every
    # pass; the training dataset of the same fold draws new augmentations.
    comp, setup = _classification_fold(tmp_path)
    mean, std = setup.meta["mean"], setup.meta["std"]
    first, second = (torch.cat([x for x, _ in setup.val_loader]) for _ in range(2))
    assert torch.equal(first, second)
    raw = cv2.imread(comp.train["path"][0], cv2.IMREAD_GRAYSCALE)
    expected = (cv2.resize(raw, (24, 24), interpolation=cv2.INTER_LINEAR) / 255.0 - mean[0]) / std[0]
    np.testing.assert_allclose(first[0, 0].numpy(), expected, atol=1e-5)
    train_ds = setup.train_loader.dataset.dataset  # the kit's IndexSeeded wraps the image dataset
    views = [train_ds[0][0] for _ in range(6)]
    assert any(not torch.equal(views[0], v) for v in views[1:])


def test_pitfall_plateau_scheduler_in_the_wrong_mode():
    """ReduceLROnPlateau(mode='min') on accuracy cuts the LR exactly while the model improves."""
    train_loader, val_loader = _loaders()
    model = _linear()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    wrong = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", patience=0)
    with pytest.raises(ValueError, match=r"mode='min'.*'accuracy'.*higher is better.*mode='max'"):
        _fit(model, train_loader, val_loader, opt=opt, scheduler=wrong)
    for acc in (0.6, 0.7, 0.8, 0.9):  # naive: an improving accuracy fed to mode='min'
        wrong.step(acc)
    assert opt.param_groups[0]["lr"] < 0.5 * 1e-2
    # the kit's mode, stepped by fit once per epoch with the validation score
    assert plateau_mode(ACC) == "max" and plateau_mode(get_metric("log_loss")) == "min"
    model = _linear()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    right = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=plateau_mode(ACC), patience=0, factor=0.5)
    for acc in (0.6, 0.7, 0.8, 0.9):
        right.step(acc)
    assert opt.param_groups[0]["lr"] == 0.5  # improving: the LR is kept
    # fit steps it once per epoch with the validation score: a stalled score halves the LR
    model = _linear()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)  # too small to change any prediction
    right = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=plateau_mode(ACC), patience=0, factor=0.5)
    result = _fit(model, train_loader, val_loader, opt=opt, scheduler=right, epochs=3)
    assert len({h["score"] for h in result.history}) == 1
    assert [h["lr"] for h in result.history] == pytest.approx([1e-4, 1e-4, 5e-5])


def test_pitfall_no_optimizer_state_in_the_checkpoint():
    """Weights alone do not continue a run (Adam's moments, the schedule); the full training state does."""
    def setup():
        model = _linear(3)
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        return model, opt, sched

    train_loader, val_loader = _loaders(seed=9)
    model, opt, sched = setup()
    _fit(model, train_loader, val_loader, epochs=1, opt=opt, scheduler=sched)
    saved = copy.deepcopy(capture_state({"model": model, "optimizer": opt, "scheduler": sched}))
    order = train_loader.generator.get_state()
    _fit(model, train_loader, val_loader, epochs=1, opt=opt, scheduler=sched)
    straight = _weights(model)

    resumed, ropt, rsched = setup()
    restore_state(copy.deepcopy(saved), {"model": resumed, "optimizer": ropt, "scheduler": rsched})
    train_loader.generator.set_state(order)
    _fit(resumed, train_loader, val_loader, epochs=1, opt=ropt, scheduler=rsched)
    assert _same(_weights(resumed), straight)
    assert ropt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]

    weights_only, wopt, wsched = setup()
    weights_only.load_state_dict(saved["model"])
    train_loader.generator.set_state(order)
    _fit(weights_only, train_loader, val_loader, epochs=1, opt=wopt, scheduler=wsched)
    assert not torch.allclose(weights_only.weight, straight["weight"], atol=1e-3)

    partial = {k: v for k, v in saved.items() if k != "optimizer"}
    with pytest.raises(ValueError, match=r"optimizer \(not in the checkpoint\)"):
        restore_state(partial, dict(zip(("model", "optimizer", "scheduler"), setup())))


def test_pitfall_normalisation_mismatch_between_training_and_inference(tmp_path):
    """Inference must normalise like training: the kit takes mean/std from the model and saves them with it."""
    import timm

    from kagglekit_nb.checkpoint import save_checkpoint
    from kagglekit_nb.cv import load_fold_model
    from kagglekit_nb.tasks.classification import normalization, transforms

    model = timm.create_model("resnet18", pretrained=False, num_classes=3, in_chans=3,
                              pretrained_cfg_overlay={"mean": (0.5, 0.5, 0.5), "std": (0.2, 0.2, 0.2)})
    mean, std = normalization(model, 3)
    assert (mean, std) == ([0.5] * 3, [0.2] * 3)  # the model's own statistics, not ImageNet's by habit
    path = save_checkpoint({"model": model.state_dict()}, tmp_path / "fold0", step=0,
                           meta={"mean": mean, "std": std, "img_size": 16}, log=None)
    _, meta = load_fold_model(path)
    img = np.random.default_rng(1).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    at_training = transforms(16, mean, std, train=False)(image=img)["image"]
    at_inference = transforms(meta["img_size"], meta["mean"], meta["std"], train=False)(image=img)["image"]
    assert torch.equal(at_training, at_inference)
    imagenet = transforms(16, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], train=False)(image=img)["image"]
    assert (imagenet - at_training).abs().max() > 0.1  # the naive default feeds the model other numbers


def test_pitfall_optimizer_built_before_moving_the_model():
    """An optimizer holding tensors that are no longer the model's trains nothing, silently; fit refuses it."""
    train_loader, val_loader = _loaders()
    previous = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)  # how .to() behaves for some devices
    try:
        model = _linear()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)  # built too early
        model.to(torch.float64)  # new parameter tensors
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(previous)
    with pytest.raises(ValueError, match="built before the model was moved"):
        _fit(model, train_loader, val_loader, opt=opt)
    before = _weights(model)  # naive: the loop runs, the model never changes
    for x, y in train_loader:
        opt.zero_grad()
        F.cross_entropy(model(x.double()), y).backward()
        opt.step()
    assert _same(_weights(model), before)
    # the same class of bug: the model re-created after the optimizer (a cell re-run out of order)
    opt = torch.optim.SGD(_linear().parameters(), lr=0.5)
    with pytest.raises(ValueError, match="another model instance"):
        _fit(_linear(), train_loader, val_loader, opt=opt)
    # and a model left on the CPU while training is asked on the GPU
    model = _linear()
    with pytest.raises(ValueError, match=r"parameters are on cpu but device='cuda'"):
        fit(model, train_loader, val_loader, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            loss_fn=nn.CrossEntropyLoss(), epochs=1, device="cuda", metric=ACC, log=None)


# --------------------------------------------------------------------------- from agents' post-mortems


def test_pitfall_training_silently_on_the_cpu(monkeypatch):
    """A GPU is attached but the run trains on the CPU: hours lost without a word. The kit says so."""
    assert device_warnings("cpu", cuda_available=False) == []
    assert device_warnings("cuda", cuda_available=True, model_device="cuda:0", batch_device="cuda:0") == []
    (w,) = device_warnings("cuda", cuda_available=True, model_device="cpu")
    assert "but the model is on the CPU" in w
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    logged: list[str] = []
    result = _fit(_linear(), *_loaders(), epochs=1, log=logged.append)
    assert any("CUDA GPU is available but training runs and the model is on the CPU" in w for w in result.warnings)
    assert any(m.startswith("WARNING: a CUDA GPU is available") for m in logged)


def test_pitfall_model_not_learning_vs_ln_c():
    """Validation loss stuck at ln(C) after an epoch means uniform guessing; the kit warns, once."""
    def zero_init(dim=4, classes=4):
        model = nn.Linear(dim, classes)
        nn.init.zeros_(model.weight)
        nn.init.zeros_(model.bias)
        return model

    train_loader, val_loader = _loaders(classes=4, dim=4)
    stuck = _fit(zero_init(), train_loader, val_loader, lr=0.0, epochs=2)
    assert stuck.history[0]["val_loss"] == pytest.approx(math.log(4), rel=1e-6)
    assert len(stuck.warnings) == 1 and "not learning" in stuck.warnings[0] and "ln(4) = 1.3863" in stuck.warnings[0]
    learning = _fit(zero_init(), train_loader, val_loader, lr=0.5, epochs=2)
    assert learning.history[0]["val_loss"] < 0.5 * math.log(4)
    assert learning.warnings == []


def test_pitfall_label_encoder_differs_between_train_and_predict(tmp_path):
    """Classes re-derived from other data shift every index; the saved encoder (labels.json) refuses that."""
    from kagglekit_nb.tasks.classification import CLASSES_FILE, Competition, _save_labels

    def comp(classes):
        empty = pd.DataFrame()
        return Competition(data_dir=tmp_path, train=empty, test=empty, sample=empty, sample_path=tmp_path / "s.csv",
                           id_col="id", target_cols=["label"], kind="label", classes=classes, in_chans=1)

    run = SimpleNamespace(dir=tmp_path)
    _save_labels(comp(["cat", "dog", "fox"]), run)
    assert json.loads((tmp_path / CLASSES_FILE).read_text())["classes"] == ["cat", "dog", "fox"]
    _save_labels(comp(["cat", "dog", "fox"]), run)  # the same classes later: fine
    later = sorted({"cat", "fox"})  # naive: re-derive the classes from data that lacks one
    assert later[1] == "fox"  # the model's class 1 ("dog") would be written as "fox"
    with pytest.raises(ValueError,
                       match=r"holds classes \['cat', 'dog', 'fox'\] but the data now has \['cat', 'fox'\]"):
        _save_labels(comp(later), run)


class _NeedsSmallBatches(nn.Module):
    """A linear model that runs out of GPU memory above 8 samples per batch (as a real one would)."""

    def __init__(self, limit: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(2, 2)
        self.limit = limit
        self.ooms = 0

    def forward(self, x):
        if x.shape[0] > self.limit:
            self.ooms += 1
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate for {x.shape[0]} samples")
        return self.lin(x)


def test_pitfall_out_of_memory():
    """Out of memory: the kit halves the batch, keeps the effective batch by accumulation, and trains on."""
    train_loader, val_loader = _loaders(batch=32)  # 64 samples: 2 batches of 32 per epoch
    model = _NeedsSmallBatches()
    result = _fit(model, train_loader, val_loader, lr=0.5, epochs=3)
    assert (result.batch_size, result.accumulate) == (8, 4)
    assert model.ooms == 3  # training at 32 and 16, the validation batch at 16
    assert result.steps == 3 * 2  # the same optimizer steps as at batch size 32
    assert sum("out of memory" in w for w in result.warnings) == 3
    reference = _NeedsSmallBatches(limit=64)
    _fit(reference, *_loaders(batch=32), lr=0.5, epochs=3)
    torch.testing.assert_close(model.lin.weight, reference.lin.weight, rtol=1e-5, atol=1e-6)
    # naive: the run dies
    naive = _NeedsSmallBatches()
    naive_loader, _ = _loaders(batch=32)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        for x, y in naive_loader:
            F.cross_entropy(naive(x), y).backward()
