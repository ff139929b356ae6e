"""Tests for kagglekit_nb.tasks.classification: parameters, reading a competition, a tiny full run."""

from __future__ import annotations

import dataclasses
import re

import json
import time
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from kagglekit_nb.demo import make_classification_demo
from kagglekit_nb.run import start_run
from kagglekit_nb.tasks import classification as clf
from kagglekit_nb.tasks.classification import Config, load

DIGITS_SORTED = ["eight", "five", "four", "nine", "one", "seven", "six", "three", "two", "zero"]


@pytest.fixture(autouse=True)
def _restore_hash_seed(monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", "0")  # start_run seeds everything and writes it


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_classification_demo(tmp_path_factory.mktemp("demo") / "digits", image_size=16)


@pytest.fixture
def run(tmp_path):
    return start_run({}, run_name="t", output_dir=tmp_path / "out", budget="10m", seed=0, environ={},
                     echo=lambda message: None)


def _cfg(data_dir, **kwargs) -> Config:
    return Config(DATA_DIR=str(data_dir), IMG_SIZE=16, **kwargs)


def _tiny(root: Path, labels=("cat", "dog"), per_class: int = 6, n_test: int = 4, mode: str = "L",
          ids=None, halves: bool = False) -> Path:
    """A small image competition: a bright square for the first class, a dark one for the others
    (`halves`: the left half bright for the first class, the right half for the others)."""
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for c, label in enumerate(labels):
        for j in range(per_class):
            rows.append((f"im{c}{j:02d}", label))
    if ids is not None:
        rows = [(i, label) for i, (_, label) in zip(ids, rows)]

    def image(level: int) -> Image.Image:
        arr = np.clip(rng.normal(level, 20, size=(12, 12)), 0, 255).astype(np.uint8)
        if halves:
            arr[:, :6] = np.clip(rng.normal(220 if level > 128 else 40, 20, size=(12, 6)), 0, 255)
            arr[:, 6:] = np.clip(rng.normal(40 if level > 128 else 220, 20, size=(12, 6)), 0, 255)
        img = Image.fromarray(arr)
        return img.convert("RGB") if mode == "RGB" else img

    for i, label in rows:
        image(220 if label == labels[0] else 40).save(root / "train" / f"{i}.png")
    test_ids = [f"t{k}" for k in range(n_test)]
    for k, i in enumerate(test_ids):
        image(220 if k % 2 == 0 else 40).save(root / "test" / f"{i}.png")
    pd.DataFrame(rows, columns=["id", "label"]).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"id": test_ids}).to_csv(root / "test.csv", index=False)
    pd.DataFrame({"id": test_ids, "label": labels[0]}).to_csv(root / "sample_submission.csv", index=False)
    return root


# --------------------------------------------------------------------------- Config


def test_config_defaults_pass_their_own_checks():
    cfg = Config()
    assert cfg.EPOCHS is None and cfg.IMG_SIZE is None and cfg.FOLDS == 5 and cfg.DATA_DIR is None
    assert cfg.as_dict()["MODEL"] == "auto"
    assert clf.LADDER[0] == ("resnet18", 32)  # the first rung: what a CPU session can afford


def test_from_namespace_takes_known_names_only():
    namespace = {"EPOCHS": 3, "MODEL": "resnet34", "np": np, "__name__": "__main__", "x": 1}
    cfg = Config.from_namespace(namespace)
    assert cfg.EPOCHS == 3 and cfg.MODEL == "resnet34"
    assert cfg.FOLDS == 5  # missing names keep their defaults


def test_from_namespace_wrong_type_names_the_parameter():
    with pytest.raises(ValueError, match=r"EPOCHS='3' has the wrong type: expected int"):
        Config.from_namespace({"EPOCHS": "3"})


@pytest.mark.parametrize(
    ("name", "value"),
    [("EPOCHS", True), ("EPOCHS", 2.0), ("SEED", None), ("LR", "0.1"), ("LR", True), ("HFLIP", 1),
     ("DATA_DIR", ["a"]), ("RUN_NAME", True), ("TRAIN_FOLDS", 1.0), ("MODEL", None)],
)
def test_wrong_types_are_refused(name, value):
    with pytest.raises(ValueError, match=re.escape(f"{name}={value!r} has the wrong type")):
        Config(**{name: value})


def test_int_is_accepted_where_a_float_is_expected():
    cfg = Config.from_namespace({"LR": 1, "WEIGHT_DECAY": 0, "LABEL_SMOOTHING": 0})
    assert cfg.LR == 1.0 and type(cfg.LR) is float
    assert type(cfg.WEIGHT_DECAY) is float and type(cfg.LABEL_SMOOTHING) is float


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(TTA="flip"), r"TTA='flip' is not valid; choose one of none, hflip, vflip, hvflip"),
        (dict(FOLDS=1), r"FOLDS=1 must be at least 2"),
        (dict(FOLDS=0), r"FOLDS=0 must be at least 1"),
        (dict(EPOCHS=0), r"EPOCHS=0"),
        (dict(IMG_SIZE=-8), r"IMG_SIZE=-8"),
        (dict(MODEL=" "), r"MODEL=' ' is empty: use 'auto'"),
        (dict(TRAIN_FOLDS=6), r"TRAIN_FOLDS=6 .*FOLDS=5"),
        (dict(TRAIN_FOLDS=0), r"TRAIN_FOLDS=0"),
        (dict(LR=0), r"LR=0.0 must be positive"),
        (dict(METRIC="f1"), r"METRIC='f1' is not known; choose one of accuracy"),
    ],
)
def test_bad_values_are_refused(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        Config.from_namespace(kwargs)


# --------------------------------------------------------------------------- load


def test_load_the_demo(demo, run):
    comp = load(_cfg(demo), run)
    train_csv = pd.read_csv(demo / "train.csv", dtype=str)
    sample = pd.read_csv(demo / "sample_submission.csv", dtype=str)
    assert comp.kind == "label"
    assert comp.id_col == "id" and comp.target_cols == ["label"]
    assert comp.classes == DIGITS_SORTED and comp.n_classes == 10
    assert comp.in_chans == 1
    assert comp.train["id"].tolist() == train_csv["id"].tolist()
    assert [comp.classes[k] for k in comp.train["label"]] == train_csv["label"].tolist()
    assert comp.test["id"].tolist() == sample["id"].tolist()  # the sample's rows, in its order
    assert all(Path(p) == demo / "train" / f"{i}.png" for i, p in zip(comp.train["id"], comp.train["path"]))
    assert all(Path(p) == demo / "test" / f"{i}.png" for i, p in zip(comp.test["id"], comp.test["path"]))
    saved = json.loads((run.dir / clf.CLASSES_FILE).read_text())
    assert saved == {"classes": DIGITS_SORTED, "kind": "label", "id_col": "id", "target_cols": ["label"],
                     "positive": None, "topk": None}


def test_load_again_with_the_same_classes_is_fine(demo, run):
    load(_cfg(demo), run)
    comp = load(_cfg(demo), run)
    assert comp.classes == DIGITS_SORTED


def test_rgb_demo_has_three_channels(tmp_path, run):
    data = make_classification_demo(tmp_path / "rgb", image_size=8, color="rgb", id_style="int",
                                    label_style="int")
    comp = load(_cfg(data), run)
    assert comp.in_chans == 3
    assert comp.classes == [str(d) for d in range(10)]  # integer labels in numeric order


def test_integer_labels_sort_as_numbers(tmp_path, run):
    data = _tiny(tmp_path / "c", labels=("10", "2", "9"))
    comp = load(_cfg(data), run)
    assert comp.classes == ["2", "9", "10"]


def test_ids_keep_leading_zeros(tmp_path, run):
    ids = [f"{k:03d}" for k in range(12)]
    data = _tiny(tmp_path / "c", ids=ids)
    comp = load(_cfg(data), run)
    assert comp.train["id"].tolist() == ids
    assert Path(comp.train["path"].iloc[0]).name == "000.png"


def test_same_name_in_train_and_test_resolves_to_its_own_folder(tmp_path, run):
    data = _tiny(tmp_path / "c")
    shutil.copy(data / "train" / "im000.png", data / "test" / "im000.png")
    sample = pd.read_csv(data / "sample_submission.csv", dtype=str)
    sample.loc[0, "id"] = "im000"
    sample.to_csv(data / "sample_submission.csv", index=False)
    comp = load(_cfg(data), run)
    assert Path(comp.train["path"].iloc[0]) == data / "train" / "im000.png"
    assert Path(comp.test["path"].iloc[0]) == data / "test" / "im000.png"


def test_per_class_probability_sample(tmp_path, run):
    data = _tiny(tmp_path / "c", labels=("cat", "dog", "bird"))
    test_ids = pd.read_csv(data / "test.csv", dtype=str)["id"]
    pd.DataFrame({"id": test_ids, "dog": 0.3, "cat": 0.3, "bird": 0.4}).to_csv(
        data / "sample_submission.csv", index=False)
    comp = load(_cfg(data), run)
    assert comp.kind == "class_proba"
    assert comp.classes == ["dog", "cat", "bird"] == comp.target_cols  # the sample's column order
    train_csv = pd.read_csv(data / "train.csv", dtype=str)
    assert [comp.classes[k] for k in comp.train["label"]] == train_csv["label"].tolist()


def test_one_hot_training_labels(tmp_path, run):
    data = _tiny(tmp_path / "c", labels=("cat", "dog"))
    train_csv = pd.read_csv(data / "train.csv", dtype=str)
    onehot = pd.DataFrame({"id": train_csv["id"], "dog": (train_csv["label"] == "dog").astype(int),
                           "cat": (train_csv["label"] == "cat").astype(int)})
    onehot.to_csv(data / "train.csv", index=False)
    test_ids = pd.read_csv(data / "test.csv", dtype=str)["id"]
    pd.DataFrame({"id": test_ids, "dog": 0.5, "cat": 0.5}).to_csv(data / "sample_submission.csv", index=False)
    comp = load(_cfg(data), run)
    assert comp.classes == ["dog", "cat"]
    assert [comp.classes[k] for k in comp.train["label"]] == train_csv["label"].tolist()


# --------------------------------------------------------------------------- load: clear errors


def test_missing_data_dir(tmp_path, run):
    with pytest.raises(FileNotFoundError, match=r"DATA_DIR='.*nope' is not a folder"):
        load(_cfg(tmp_path / "nope"), run)


def test_missing_train_csv(tmp_path, run):
    data = _tiny(tmp_path / "c")
    (data / "train.csv").unlink()
    with pytest.raises(ValueError, match=r"cannot find the training labels.*LABELS_FILE") as info:
        load(_cfg(data), run)
    assert str(data) in str(info.value)


def test_missing_sample_submission(tmp_path, run):
    data = _tiny(tmp_path / "c")
    (data / "sample_submission.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"no sample submission in .*train\.csv.*SAMPLE_FILE"):
        load(_cfg(data), run)


def test_train_csv_without_the_sample_id_column(tmp_path, run):
    data = _tiny(tmp_path / "c")
    pd.read_csv(data / "train.csv").rename(columns={"id": "image"}).to_csv(data / "train.csv", index=False)
    with pytest.raises(ValueError, match=r"train.csv: no column 'id'.*\['image', 'label'\]"):
        load(_cfg(data), run)


def test_listed_image_missing(tmp_path, run):
    data = _tiny(tmp_path / "c")
    (data / "train" / "im103.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 12 images listed in train.csv were not found") as info:
        load(_cfg(data), run)
    assert "'im103'" in str(info.value)


def test_test_image_missing_names_the_sample(tmp_path, run):
    data = _tiny(tmp_path / "c")
    (data / "test" / "t2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"listed in sample_submission.csv.*'t2'"):
        load(_cfg(data), run)


def test_unknown_image_format(tmp_path, run):
    data = _tiny(tmp_path / "c")
    (data / "train" / "im001.png").rename(data / "train" / "im001.xyz")
    train_csv = pd.read_csv(data / "train.csv", dtype=str)
    train_csv.loc[train_csv["id"] == "im001", "id"] = "im001.xyz"  # the id names the file
    train_csv.to_csv(data / "train.csv", index=False)
    with pytest.raises(ValueError, match=r"1 train images have an unknown format \(e.g. im001.xyz\)"):
        load(_cfg(data), run)


def test_unreadable_image(tmp_path, run):
    data = _tiny(tmp_path / "c")
    (data / "train" / "im000.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*im000.png"):
        load(_cfg(data), run)


def test_changed_classes_against_saved_labels(tmp_path, run):
    data = _tiny(tmp_path / "c")
    load(_cfg(data), run)
    train_csv = pd.read_csv(data / "train.csv", dtype=str)
    train_csv.loc[0, "label"] = "bird"
    train_csv.to_csv(data / "train.csv", index=False)
    with pytest.raises(ValueError, match=r"labels.json holds classes \['cat', 'dog'\].*new OUTPUT_DIR"):
        load(_cfg(data), run)


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (lambda df: df.assign(label="cat"), r"single class \['cat'\]"),
        (lambda df: df.assign(id=["im000"] * len(df)), r"repeats ids"),
        (lambda df: df.assign(label=[""] + df["label"].tolist()[1:]), r"1 rows with an empty 'label'"),
    ],
)
def test_bad_train_csv_contents(tmp_path, run, change, pattern):
    data = _tiny(tmp_path / "c")
    change(pd.read_csv(data / "train.csv", dtype=str)).to_csv(data / "train.csv", index=False)
    with pytest.raises(ValueError, match=pattern):
        load(_cfg(data), run)


def test_sample_with_only_the_id_column(tmp_path, run):
    data = _tiny(tmp_path / "c")
    pd.read_csv(data / "sample_submission.csv")[["id"]].to_csv(data / "sample_submission.csv", index=False)
    with pytest.raises(ValueError, match=r"has only the column 'id'"):
        load(_cfg(data), run)


# --------------------------------------------------------------------------- data and model


def test_image_dataset_yields_normalised_tensors(tmp_path):
    data = _tiny(tmp_path / "c")
    paths = sorted(str(p) for p in (data / "train").glob("*.png"))
    tf = clf.transforms(16, [0.5], [0.25], train=False)
    x, y = clf.ImageDataset(paths, np.arange(len(paths)), tf, in_chans=1)[3]
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32
    assert y.item() == 3 and y.dtype == torch.long
    raw = np.asarray(Image.open(paths[3]).resize((16, 16), Image.BILINEAR), dtype=np.float32) / 255
    assert x.mean().item() == pytest.approx(((raw - 0.5) / 0.25).mean(), abs=0.05)
    x3 = clf.ImageDataset(paths, None, clf.transforms(16, [0.5] * 3, [0.25] * 3, train=False), in_chans=3)[0]
    assert x3.shape == (3, 16, 16)


def test_sixteen_bit_grayscale_keeps_its_levels(tmp_path):
    levels = (np.arange(64, dtype=np.uint16) * 1000).reshape(8, 8)
    Image.fromarray(levels).save(tmp_path / "x16.png")
    assert clf._channels([str(tmp_path / "x16.png")]) == 1
    ds = clf.ImageDataset([str(tmp_path / "x16.png")], None, lambda image: {"image": image}, in_chans=1)
    arr = ds[0][..., 0].astype(int)
    assert len(np.unique(arr)) >= 32
    assert (np.diff(arr.ravel()) >= 0).all()  # brighter source pixels stay brighter


def test_build_model_shapes_and_normalization():
    model = clf.build_model(Config(MODEL="resnet18"), n_classes=3, in_chans=1)
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 3)
    mean, std = clf.normalization(model, 1)
    assert len(mean) == len(std) == 1
    assert mean[0] == pytest.approx(np.mean([0.485, 0.456, 0.406]))
    assert len(clf.normalization(model, 3)[0]) == 3


def test_build_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"WEIGHTS='.*missing.pth' is not a file"):
        clf.build_model(Config(MODEL="resnet18", WEIGHTS=str(tmp_path / "missing.pth")), 3, 1)
    with pytest.raises(ValueError, match=r"MODEL='resnet1800' is not a timm model"):
        clf.build_model(Config(MODEL="resnet1800"), 3, 1)
    with pytest.raises(ValueError, match=r"MODEL='auto' names no model yet: `choose_model`"):
        clf.build_model(Config(), 3, 1)


def test_tta_flips():
    x = torch.arange(4.0).reshape(1, 1, 2, 2)
    (h,) = clf._tta("hflip")
    (v,) = clf._tta("vflip")
    assert h(x).flatten().tolist() == [1, 0, 3, 2]
    assert v(x).flatten().tolist() == [2, 3, 0, 1]
    assert len(clf._tta("hvflip")) == 2 and clf._tta("none") == []


# --------------------------------------------------------------------------- a tiny run, end to end


def test_tiny_run_trains_predicts_writes_and_resumes(tmp_path):
    data = _tiny(tmp_path / "c", per_class=8, n_test=6)
    cfg = Config(DATA_DIR=str(data), OUTPUT_DIR=str(tmp_path / "out"), BUDGET="2h", SEED=0, IMG_SIZE=16,
                 MODEL="test_resnet", EPOCHS=2, MIN_EPOCHS=1, FOLDS=2, BATCH_SIZE=4, NUM_WORKERS=0, DEVICE="cpu")
    run = clf.start(cfg, environ={}, echo=lambda message: None)
    comp = clf.load(cfg, run)
    folds = clf.make_folds(comp, cfg, run)
    result = clf.train(comp, folds, cfg, run)
    assert sorted(result.folds) == [0, 1]
    assert all(info["status"] == "done" and info["epochs_done"] == 2 for info in result.folds.values())
    assert result.cv_score is not None and 0.0 <= result.cv_score <= 1.0
    for k in (0, 1):
        assert (run.dir / "checkpoints" / f"fold{k}" / "best.ckpt").is_file()
        oof = pd.read_csv(run.dir / f"oof_fold{k}.csv", dtype={"id": str})
        assert set(oof["id"]) == set(comp.train["id"][folds.to_numpy() == k])

    probs = clf.predict(comp, result, cfg, run)
    assert probs.shape == (6, 2)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    path = clf.write_submission(comp, probs, cfg, run)
    sub = pd.read_csv(path, dtype=str)
    assert sub["id"].tolist() == comp.sample["id"].tolist()
    assert set(sub["label"]) <= {"cat", "dog"}
    report = clf.finish(comp, path, cfg, run)
    assert report.valid
    assert json.loads((run.dir / "verification.json").read_text())["valid"] is True
    record = json.loads((run.dir / "run.json").read_text())
    assert record["folds_done"] == [0, 1] and record["submission"] == "model"

    # running again with the same OUTPUT_DIR keeps the finished folds instead of retraining them
    stamp = (run.dir / "checkpoints" / "fold0" / "best.ckpt").stat().st_mtime_ns
    run2 = clf.start(cfg, environ={}, echo=lambda message: None)
    assert run2.previous is not None and run2.record["sessions"] == 2
    comp2 = clf.load(cfg, run2)
    again = clf.train(comp2, clf.make_folds(comp2, cfg, run2), cfg, run2)
    assert sorted(again.folds) == [0, 1] and again.plan == {}
    assert (run.dir / "checkpoints" / "fold0" / "best.ckpt").stat().st_mtime_ns == stamp
    assert again.cv_score == pytest.approx(result.cv_score)


def test_no_trained_fold_writes_the_baseline(tmp_path, run):
    data = _tiny(tmp_path / "c")
    train_csv = pd.read_csv(data / "train.csv", dtype=str)
    train_csv.loc[train_csv["label"] == "cat", "label"] = ["dog"] * 2 + ["cat"] * 4  # 4 cat, 8 dog
    train_csv.to_csv(data / "train.csv", index=False)
    cfg = _cfg(data)
    comp = load(cfg, run)
    assert clf.predict(comp, None, cfg, run) is None
    path = clf.write_submission(comp, None, cfg, run)
    sub = pd.read_csv(path, dtype=str)
    assert sub["id"].tolist() == comp.sample["id"].tolist()
    assert set(sub["label"]) == {"dog"}  # the majority class of train.csv
    assert run.record["submission"].startswith("emergency baseline")


def _one_fold_run(tmp_path):
    """A tiny competition with fold 0 of 2 trained for one epoch: (cfg, run, comp, folds)."""
    data = _tiny(tmp_path / "c", per_class=8, n_test=2)
    cfg = Config(DATA_DIR=str(data), OUTPUT_DIR=str(tmp_path / "out"), BUDGET="2h", SEED=0, IMG_SIZE=16,
                 MODEL="test_resnet", EPOCHS=1, MIN_EPOCHS=1, FOLDS=2, TRAIN_FOLDS=1, BATCH_SIZE=4,
                 NUM_WORKERS=0, DEVICE="cpu")
    run = clf.start(cfg, environ={}, echo=lambda message: None)
    comp = clf.load(cfg, run)
    folds = clf.make_folds(comp, cfg, run)
    assert sorted(clf.train(comp, folds, cfg, run).folds) == [0]
    return cfg, run, comp, folds


def test_done_fold_with_a_lost_checkpoint_is_retrained_or_reported(tmp_path):
    cfg, run, comp, folds = _one_fold_run(tmp_path)
    (run.dir / "checkpoints" / "fold0" / "best.ckpt").unlink()  # e.g. an output folder only partly kept
    try:
        again = clf.train(comp, folds, cfg, run)
    except (FileNotFoundError, ValueError):
        return  # failing loudly is fine too
    assert sorted(again.folds) == [0]
    # the step checkpoint of the finished fold is still there: prediction uses it (as 'last')
    from kagglekit_nb.cv import fold_models

    assert [(k, which) for k, _, which in fold_models(run, 1)] in ([(0, "best")], [(0, "last")])


def test_done_folds_of_another_setup_are_refused(tmp_path):
    cfg, run, comp, folds = _one_fold_run(tmp_path)
    bigger = dataclasses.replace(cfg, IMG_SIZE=24)  # same OUTPUT_DIR, other image size
    with pytest.raises(ValueError, match=r"fold 0 .* another setup: img_size: the checkpoint has 16, this run has 24"):
        clf.train(comp, folds, bigger, run)


# --------------------------------------------------------------------------- always a valid submission


def _valid_baseline(run, data, label):
    from kagglekit_nb.submission import verify

    sub = pd.read_csv(run.dir / "submission.csv", dtype=str)
    assert verify(run.dir / "submission.csv", data / "sample_submission.csv").valid
    assert set(sub["label"]) == {label}
    return sub


def test_a_load_failing_after_the_sample_leaves_the_baseline(tmp_path, run):
    data = _tiny(tmp_path / "c")
    train_csv = pd.read_csv(data / "train.csv", dtype=str)
    train_csv.loc[train_csv["label"] == "cat", "label"] = ["dog"] * 2 + ["cat"] * 4  # majority: dog
    train_csv.to_csv(data / "train.csv", index=False)
    shutil.rmtree(data / "test")  # the test images are not attached
    with pytest.raises(FileNotFoundError, match=r"4 of 4 images listed in sample_submission.csv were not found"):
        load(_cfg(data), run)
    sub = _valid_baseline(run, data, "dog")
    assert sub["id"].tolist() == ["t0", "t1", "t2", "t3"]
    assert json.loads((run.dir / "run.json").read_text())["submission"].startswith("emergency baseline")


def test_a_bad_label_still_leaves_the_baseline(tmp_path, run):
    data = _tiny(tmp_path / "c")
    train_csv = pd.read_csv(data / "train.csv", dtype=str)
    train_csv.loc[0, "label"] = ""
    train_csv.to_csv(data / "train.csv", index=False)
    with pytest.raises(ValueError, match=r"1 rows with an empty 'label'"):
        load(_cfg(data), run)
    _valid_baseline(run, data, "dog")  # 5 cat / 6 dog among the labelled rows


def test_a_csv_that_is_not_utf8_is_read_and_said(tmp_path):
    data = _tiny(tmp_path / "c", labels=("café", "thé"))
    for name in ("train.csv", "sample_submission.csv"):
        text = (data / name).read_text(encoding="utf-8")
        (data / name).write_bytes(text.encode("cp1252"))
    lines = []
    run = start_run({}, run_name="t", output_dir=tmp_path / "out", budget="10m", seed=0, environ={},
                    echo=lines.append)
    comp = load(_cfg(data), run)
    assert comp.classes == ["café", "thé"]
    assert any("train.csv is not UTF-8: read it as cp1252" in line for line in lines)
    path = clf.write_submission(comp, np.tile([0.2, 0.8], (4, 1)), _cfg(data), run)
    assert clf.finish(comp, path, _cfg(data), run).valid


def test_classical_stage_scores_and_submits_first(tmp_path):
    data = _tiny(tmp_path / "c", per_class=10, n_test=6, halves=True)
    cfg = Config(DATA_DIR=str(data), OUTPUT_DIR=str(tmp_path / "out"), BUDGET="1h", SEED=0, FOLDS=2)
    run = clf.start(cfg, environ={}, echo=lambda message: None)
    comp = clf.load(cfg, run)
    folds = clf.make_folds(comp, cfg, run)
    result = clf.classical_stage(comp, folds, cfg, run)
    assert result.score == 1.0 and result.folds_done == [0, 1]  # bright vs dark squares
    assert result.oof.shape == (20, 2) and result.test.shape == (6, 2)
    clf._submit_classical(comp, folds, result, cfg, run)
    sub = pd.read_csv(run.dir / "submission.csv", dtype=str)
    assert sub["label"].tolist() == ["cat", "dog"] * 3 and run.record["submission"] == "classical stage"
    again = clf.classical_stage(comp, folds, cfg, run)  # reused from classical.npz
    np.testing.assert_array_equal(again.oof, result.oof)


def test_classical_stage_asks_the_budget(tmp_path):
    data = _tiny(tmp_path / "c")
    cfg = Config(DATA_DIR=str(data), OUTPUT_DIR=str(tmp_path / "out"), BUDGET="1h", SEED=0, FOLDS=2)
    run = clf.start(cfg, environ={}, echo=lambda message: None)
    comp = clf.load(cfg, run)
    folds = clf.make_folds(comp, cfg, run)
    run.budget.reserve("predict", run.budget.remaining())  # nothing left for anything else
    assert clf.classical_stage(comp, folds, cfg, run) is None
    assert run.record["classical"]["skipped"].startswith("budget: stopped to keep time for")
    assert not (run.dir / clf.CLASSICAL_FILE).exists()


def test_a_broken_deep_model_submits_the_classical_stage(tmp_path, monkeypatch):
    data = _tiny(tmp_path / "c", per_class=10, n_test=6, halves=True)
    cfg = Config(DATA_DIR=str(data), OUTPUT_DIR=str(tmp_path / "out"), BUDGET="2h", SEED=0, IMG_SIZE=16,
                 MODEL="test_resnet", EPOCHS=1, MIN_EPOCHS=1, FOLDS=2, BATCH_SIZE=4, NUM_WORKERS=0, DEVICE="cpu")
    run = clf.start(cfg, environ={}, echo=lambda message: None)
    comp = clf.load(cfg, run)
    folds = clf.make_folds(comp, cfg, run)
    build = clf.build_model

    def broken(*args, **kwargs):  # a model that can only ever answer "dog" (its cat logit is -inf)
        model = build(*args, **kwargs)
        head = model.get_classifier()
        torch.nn.init.zeros_(head.weight)
        head.weight.requires_grad_(False)
        with torch.no_grad():
            head.bias.copy_(torch.tensor([-1e4, 1e4]))
        head.bias.requires_grad_(False)
        return model

    monkeypatch.setattr(clf, "build_model", broken)
    models = clf.train(comp, folds, cfg, run)
    assert models.classical is not None and models.classical.score == 1.0
    preds = clf.predict(comp, models, cfg, run)
    record = run.record
    assert record["submitted"] == "classical"
    assert record["candidates"]["deep"] == 0.5 and record["candidates"]["classical"] == 1.0
    assert record["candidates"]["baseline"] <= 0.5
    path = clf.write_submission(comp, preds, cfg, run)
    assert pd.read_csv(path, dtype=str)["label"].tolist() == ["cat", "dog"] * 3
    assert clf.finish(comp, path, cfg, run).valid
    table = clf.candidates(run)
    assert table.loc["classical", "submitted"] and not table.loc["deep", "submitted"]


def test_three_corrupt_images_are_skipped_and_listed(demo, tmp_path):
    data = tmp_path / "digits"
    shutil.copytree(demo, data)
    names = sorted((data / "train").glob("*.png"))[100:103]
    names[0].write_bytes(names[0].read_bytes()[:60])   # truncated PNG
    names[1].write_bytes(b"")                          # zero-byte file
    names[2].write_bytes(names[2].read_bytes()[:30])
    cfg = Config(DATA_DIR=str(data), OUTPUT_DIR=str(tmp_path / "out"), BUDGET="1h", SEED=0, IMG_SIZE=16,
                 MODEL="test_resnet", EPOCHS=1, MIN_EPOCHS=1, FOLDS=2, TRAIN_FOLDS=1, BATCH_SIZE=64,
                 NUM_WORKERS=0, DEVICE="cpu")
    run = clf.start(cfg, environ={}, echo=lambda message: None)
    comp = clf.load(cfg, run)
    folds = clf.make_folds(comp, cfg, run)
    models = clf.train(comp, folds, cfg, run)
    assert sorted(models.folds) == [0]
    path = clf.write_submission(comp, clf.predict(comp, models, cfg, run), cfg, run)
    assert clf.finish(comp, path, cfg, run).valid
    record = json.loads((run.dir / "run.json").read_text())
    assert record["unreadable_images"]["count"] == 3
    assert record["unreadable_images"]["files"] == sorted(str(p) for p in names)
    assert record["submitted"] in ("classical", "deep", "blend")


def test_too_many_unreadable_images_stop_before_training(tmp_path):
    data = _tiny(tmp_path / "c")
    (data / "train" / "im005.png").write_bytes(b"")
    cfg = Config(DATA_DIR=str(data), OUTPUT_DIR=str(tmp_path / "out"), BUDGET="1h", SEED=0, CHECK_IMAGES=True)
    run = clf.start(cfg, environ={}, echo=lambda message: None)
    with pytest.raises(ValueError, match=r"(?s)1 of 16 images cannot be read \(6.2%, more than the 0.5%.*im005.png"):
        clf.load(cfg, run)
    assert json.loads((run.dir / "run.json").read_text())["unreadable_images"]["count"] == 1
    assert (run.dir / "submission.csv").is_file()  # the baseline, written before the images were read


# --------------------------------------------------------------------------- MODEL = "auto": the ladder

TEST_LADDER = (("test_resnet", 16), ("test_efficientnet", 24), ("test_convnext", 32))
FAST = {"test_resnet": 1e-3, "test_efficientnet": 2e-3, "test_convnext": 3e-3}   # seconds per step
SLOW = {"test_resnet": 1.0, "test_efficientnet": 1000.0, "test_convnext": 2000.0}


@pytest.fixture
def ladder(monkeypatch):
    """The ladder of timm's tiny test models, and a smoke step that reports `pace[architecture]`
    seconds per step (the fake clock does not move): returns `use(pace)` and the models it timed."""
    from kagglekit_nb import cv
    from kagglekit_nb.preflight import SmokeReport

    monkeypatch.setattr(clf, "LADDER", TEST_LADDER)
    timed: list[str] = []

    def use(pace):
        def fake(model, *args, **kwargs):
            timed.append(model.pretrained_cfg["architecture"])
            return SmokeReport(step_s=pace[model.pretrained_cfg["architecture"]], eval_s_per_sample=0.0, loss=0.7)
        monkeypatch.setattr(cv, "smoke_step", fake)
        return timed

    return use


def _ladder_session(data: Path, out: Path, lines: list[str] | None = None, **kwargs):
    from _fakes import FakeClock

    clock = FakeClock()
    cfg = Config(DATA_DIR=str(data), OUTPUT_DIR=str(out), BUDGET="1h", SEED=0, FOLDS=2, BATCH_SIZE=4,
                 NUM_WORKERS=0, DEVICE="cpu", **kwargs)
    run = clf.start(cfg, environ={"KAGGLEKIT_START": repr(clock())}, clock=clock,
                    echo=(lines if lines is not None else []).append)
    comp = clf.load(cfg, run)
    return cfg, run, comp, clf.make_folds(comp, cfg, run)


def test_auto_takes_the_strongest_rung_on_a_fast_machine(tmp_path, ladder):
    timed = ladder(FAST)
    lines: list[str] = []
    cfg, run, comp, folds = _ladder_session(_tiny(tmp_path / "c"), tmp_path / "out", lines)
    chosen = clf.choose_model(comp, folds, cfg, run)
    assert (chosen.MODEL, chosen.IMG_SIZE) == ("test_convnext", 32)
    assert timed == ["test_resnet", "test_efficientnet", "test_convnext"]
    choice = json.loads((run.dir / "run.json").read_text())["model_choice"]
    assert choice["chosen_by"] == "ladder" and choice["rung"] == 2 and choice["epochs_needed"] == 10
    assert [r["fits"] for r in choice["rungs"]] == [True, True, True]
    said = next(line for line in lines if "MODEL='auto'" in line)
    assert "test_convnext at 32 px (rung 2), the strongest rung that fits" in said
    assert "2 folds x 10 epochs" in said and said.count(" yes") == 3


def test_auto_takes_a_smaller_rung_when_the_smoke_step_is_slow(tmp_path, ladder):
    timed = ladder(SLOW)
    lines: list[str] = []
    cfg, run, comp, folds = _ladder_session(_tiny(tmp_path / "c"), tmp_path / "out", lines)
    chosen = clf.choose_model(comp, folds, cfg, run)
    assert (chosen.MODEL, chosen.IMG_SIZE) == ("test_resnet", 16)
    assert timed == ["test_resnet", "test_efficientnet"]   # the climb stops at the first that cannot fit
    assert [r["fits"] for r in run.record["model_choice"]["rungs"]] == [True, False, None]
    said = next(line for line in lines if "MODEL='auto'" in line)
    assert "test_resnet at 16 px (rung 0)" in said and "not timed" in said


def test_auto_at_a_given_img_size_climbs_the_models_at_that_size(tmp_path, ladder):
    ladder(FAST)
    cfg, run, comp, folds = _ladder_session(_tiny(tmp_path / "c"), tmp_path / "out", IMG_SIZE=20)
    chosen = clf.choose_model(comp, folds, cfg, run)
    assert (chosen.MODEL, chosen.IMG_SIZE) == ("test_convnext", 20)
    assert {r["img_size"] for r in run.record["model_choice"]["rungs"]} == {20}


def test_an_explicit_model_wins_and_is_not_timed(tmp_path, ladder):
    timed = ladder(SLOW)
    cfg, run, comp, folds = _ladder_session(_tiny(tmp_path / "c"), tmp_path / "out", MODEL="test_convnext")
    chosen = clf.choose_model(comp, folds, cfg, run)
    assert (chosen.MODEL, chosen.IMG_SIZE) == ("test_convnext", 32)   # its ladder size
    assert timed == [] and run.record["model_choice"]["chosen_by"] == "MODEL"
    other = clf.choose_model(comp, folds, dataclasses.replace(cfg, MODEL="test_vit"), run)
    assert (other.MODEL, other.IMG_SIZE) == ("test_vit", clf.DEFAULT_IMG_SIZE)
    sized = clf.choose_model(comp, folds, dataclasses.replace(cfg, IMG_SIZE=12), run)
    assert (sized.MODEL, sized.IMG_SIZE) == ("test_convnext", 12)
    assert timed == []


def test_a_resumed_run_keeps_its_model(tmp_path, ladder):
    data, out = _tiny(tmp_path / "c"), tmp_path / "out"
    timed = ladder(FAST)
    cfg, run, comp, folds = _ladder_session(data, out, EPOCHS=1, MIN_EPOCHS=1, TRAIN_FOLDS=1)
    first = clf.train(comp, folds, cfg, run)
    assert run.record["model_choice"]["model"] == "test_convnext" and first.folds[0]["status"] == "done"
    assert timed == ["test_resnet", "test_efficientnet", "test_convnext"]  # training reuses the rung's timing

    timed = ladder(SLOW)   # a later session on a slower machine would choose test_resnet afresh
    timed.clear()
    assert "timed" in json.loads((out / "run.json").read_text())["model_choice"]
    lines: list[str] = []
    cfg2, run2, comp2, folds2 = _ladder_session(data, out, lines, EPOCHS=1, MIN_EPOCHS=1, TRAIN_FOLDS=1)
    chosen = clf.choose_model(comp2, folds2, cfg2, run2)
    assert (chosen.MODEL, chosen.IMG_SIZE) == ("test_convnext", 32) and timed == []
    assert any("as chosen before (ladder)" in line for line in lines)

    # run.json lost its record: the fold checkpoints' meta still names the model
    record = json.loads((out / "run.json").read_text())
    del record["model_choice"]
    (out / "run.json").write_text(json.dumps(record))
    cfg3, run3, comp3, folds3 = _ladder_session(data, out, EPOCHS=1, MIN_EPOCHS=1, TRAIN_FOLDS=1)
    again = clf.train(comp3, folds3, cfg3, run3)
    assert run3.record["model_choice"] == {"model": "test_convnext", "img_size": 32,
                                           "chosen_by": "checkpoints of fold 0"}
    assert again.plan == {} and again.folds[0]["status"] == "done"   # the finished fold is kept
    assert timed == []


def test_a_hidden_test_set_too_large_for_the_budget_keeps_its_prediction_time(tmp_path):
    # A code competition reruns the notebook on a hidden test set far larger than the sample's 6 rows:
    # TEST_ROWS sizes the prediction reserve for it, so the deep model is not trained into that time.
    data = _tiny(tmp_path / "c", per_class=8, n_test=6)
    lines = []
    cfg = Config(DATA_DIR=str(data), OUTPUT_DIR=str(tmp_path / "out"), BUDGET="10m", SEED=0, IMG_SIZE=16,
                 MODEL="test_resnet", EPOCHS=2, MIN_EPOCHS=1, FOLDS=2, BATCH_SIZE=4, NUM_WORKERS=0, DEVICE="cpu",
                 TEST_ROWS=10**9)
    run = clf.start(cfg, environ={"KAGGLEKIT_START": repr(time.monotonic())}, echo=lines.append)
    comp = clf.load(cfg, run)
    result = clf.train(comp, clf.make_folds(comp, cfg, run), cfg, run)
    assert run.record["test_rows"] == 10**9
    assert any("sized for 1000000000 test images (TEST_ROWS), not the 6" in m for m in lines)
    assert not any(info.get("epochs_done") for info in result.folds.values())  # no epoch took prediction's time
    path = clf.write_submission(comp, clf.predict(comp, result, cfg, run), cfg, run)
    assert clf.finish(comp, path, cfg, run).valid
    with pytest.raises(ValueError, match=r"TEST_ROWS=0 must be at least 1"):
        Config(TEST_ROWS=0)


# --------------------------------------------------------------------------- faults in the epilogues


def _small_deep(tmp_path: Path) -> tuple[Config, Path]:
    data = _tiny(tmp_path / "c", per_class=10, n_test=6, halves=True)
    return Config(DATA_DIR=str(data), OUTPUT_DIR=str(tmp_path / "out"), BUDGET="2h", SEED=0, IMG_SIZE=16,
                  MODEL="test_resnet", EPOCHS=1, MIN_EPOCHS=1, FOLDS=2, BATCH_SIZE=4, NUM_WORKERS=0,
                  DEVICE="cpu", WEIGHTS=None), data


def _temp_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file() and p.name.endswith(".tmp"))


@pytest.mark.parametrize("full_at", ["oof_fold0.csv", "folds.json", "submission.csv"])
def test_a_full_disk_in_an_epilogue_keeps_the_last_valid_submission_and_leaves_no_temp_file(tmp_path, monkeypatch,
                                                                                           full_at):
    """The disk fills while the fold's out-of-fold file or the fold record (end of a fold), or the model's
    submission (end of the run) is written: the error is the OSError itself, submission.csv is still
    the last verified one (the classical stage's), no temp file is left, and the same calls once the
    disk has room again finish the run with the model's verified submission."""
    import errno
    import os

    cfg, data = _small_deep(tmp_path)
    real_fsync = os.fsync

    def full_disk(fd):
        if f".{full_at}." in os.readlink(f"/proc/self/fd/{fd}"):  # the atomic writer's temp file of that name
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    run = clf.start(cfg, environ={}, echo=lambda message: None)
    comp = clf.load(cfg, run)
    folds = clf.make_folds(comp, cfg, run)
    models = clf.train(comp, folds, cfg, run) if full_at == "submission.csv" else None
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", full_disk)
        with pytest.raises(OSError, match="No space left on device"):
            models = models or clf.train(comp, folds, cfg, run)
            clf.write_submission(comp, clf.predict(comp, models, cfg, run), cfg, run)
    assert run.record["submission"] == "classical stage"
    assert _temp_files(run.dir) == []
    assert clf.finish(comp, run.dir / "submission.csv", cfg, run).valid

    models = clf.train(comp, folds, cfg, run)  # room again: the same steps finish the run
    path = clf.write_submission(comp, clf.predict(comp, models, cfg, run), cfg, run)
    assert clf.finish(comp, path, cfg, run).valid and _temp_files(run.dir) == []
    assert run.record["submission"] in {"model", "classical stage"}
    assert (run.dir / "oof_fold0.csv").is_file() and json.loads((run.dir / "folds.json").read_text())


def test_sigterm_during_prediction_leaves_the_last_verified_submission(tmp_path):
    """SIGTERM reaching the process while it predicts (no handler then: the process ends at once):
    submission.csv is the classical stage's verified file, whole, and no temp file is left."""
    import signal
    import subprocess
    import sys

    cfg, _ = _small_deep(tmp_path)
    script = f"""
import os, signal
from kagglekit_nb.tasks import classification as clf
cfg = clf.Config(**{dataclasses.asdict(cfg)!r})
run = clf.start(cfg, environ={{}}, echo=lambda m: None)
comp = clf.load(cfg, run)
folds = clf.make_folds(comp, cfg, run)
models = clf.train(comp, folds, cfg, run)
def stopped(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
clf._predict_loader = stopped
clf.write_submission(comp, clf.predict(comp, models, cfg, run), cfg, run)
print("not reached")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": str(Path(clf.__file__).parents[2])})
    assert proc.returncode == -signal.SIGTERM, proc.stderr[-2000:]
    assert "not reached" not in proc.stdout
    out = Path(cfg.OUTPUT_DIR)
    record = json.loads((out / "run.json").read_text())
    assert record["submission"] == "classical stage" and _temp_files(out) == []
    sub = pd.read_csv(out / "submission.csv", dtype=str)
    assert sub["label"].tolist() == ["cat", "dog"] * 3   # the classical stage's answers, whole
