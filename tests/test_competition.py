"""Tests for kagglekit_nb/tasks/competition.py: the reader's decisions on hand-made layouts, and its errors
(the real competitions' layouts are in tests/test_layouts.py and tests/test_kaggle_layouts.py)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kagglekit_nb.tasks.competition import Overrides, read

RNG = np.random.default_rng(0)


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def _comp(tmp_path, n=12, classes=("cat", "dog"), images="train", test_images="test", sample_value="cat"):
    """train.csv id,label + images by id + sample_submission.csv (ids of the test images)."""
    d = tmp_path / "data"
    ids = [f"t{i}" for i in range(n)]
    labels = [classes[i % len(classes)] for i in range(n)]
    d.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": ids, "label": labels}).to_csv(d / "train.csv", index=False)
    for i in ids:
        _png(d / images / f"{i}.png")
    test_ids = [f"s{i}" for i in range(4)]
    for i in test_ids:
        _png(d / test_images / f"{i}.png")
    pd.DataFrame({"id": test_ids, "label": [sample_value] * 4}).to_csv(d / "sample_submission.csv", index=False)
    return d


def _read(d, tmp_path, **overrides):
    return read(d, Overrides(**overrides), scratch=tmp_path / "scratch", log=lambda m: None)


def test_a_plain_layout_reads_ids_labels_and_paths_in_order(tmp_path):
    d = _comp(tmp_path)
    comp = _read(d, tmp_path)
    assert comp.kind == "label" and comp.classes == ["cat", "dog"] and comp.metric == "accuracy"
    assert comp.train["id"].tolist() == [f"t{i}" for i in range(12)]
    assert comp.y.tolist() == [0, 1] * 6
    assert comp.train["path"].tolist() == [str(d / "train" / f"t{i}.png") for i in range(12)]
    assert comp.test["path"].tolist() == [str(d / "test" / f"s{i}.png") for i in range(4)]
    table = comp.describe()
    assert "train.csv column 'label'" in table and "LABELS_FILE" in table and "METRIC" in table


def test_two_candidate_label_files_are_an_error_naming_both_and_the_parameter(tmp_path):
    d = _comp(tmp_path)
    pd.read_csv(d / "train.csv").to_csv(d / "labels.csv", index=False)
    with pytest.raises(ValueError, match=r"labels\.csv.*train\.csv.*LABELS_FILE|train\.csv.*labels\.csv.*LABELS_FILE"):
        _read(d, tmp_path)
    assert _read(d, tmp_path, labels_file="labels.csv").decisions[3].value.startswith("labels.csv")


def test_the_same_image_in_two_folders_is_an_error_naming_the_folders_and_image_dir(tmp_path):
    d = _comp(tmp_path)
    for i in range(12):
        _png(d / "train_small" / f"t{i}.png")
    with pytest.raises(ValueError, match=r"several folders.*train_small.*IMAGE_DIR"):
        _read(d, tmp_path)
    comp = _read(d, tmp_path, image_dir="train_small")
    assert all("/train_small/" in p for p in comp.train["path"])


def test_a_decodable_format_wins_over_dicom_whatever_the_folder_order(tmp_path):
    d = _comp(tmp_path, images="jpeg/train")
    for i in range(12):  # the same stems as .dcm in a folder that sorts first
        (d / "a_train").mkdir(exist_ok=True)
        (d / "a_train" / f"t{i}.dcm").write_bytes(b"DICM")
    comp = _read(d, tmp_path)
    assert all(p.endswith(".png") and "/jpeg/train/" in p for p in comp.train["path"])


def test_the_label_column_is_asked_for_with_the_candidates_listed(tmp_path):
    d = _comp(tmp_path)
    df = pd.read_csv(d / "train.csv").rename(columns={"label": "kind"})
    df["colour"] = ["red", "blue", "green"] * 4
    df.to_csv(d / "train.csv", index=False)
    with pytest.raises(ValueError, match=r"candidates: \['kind', 'colour'\].*LABEL_COLUMN"):
        _read(d, tmp_path)
    assert _read(d, tmp_path, label_column="kind").classes == ["cat", "dog"]
    with pytest.raises(ValueError, match=r"LABEL_COLUMN='nope' is not a column of train\.csv"):
        _read(d, tmp_path, label_column="nope")


def test_a_binary_sample_with_zeros_writes_a_probability_unless_the_metric_judges_labels(tmp_path):
    d = _comp(tmp_path, classes=("0", "1"), sample_value="0")
    comp = _read(d, tmp_path)
    assert comp.kind == "binary_proba" and comp.positive == "1" and comp.metric == "roc_auc"
    assert _read(d, tmp_path, metric="accuracy").kind == "label"
    assert _read(d, tmp_path, target="label").kind == "label"


def test_an_unnamed_index_column_in_the_sample_and_train_is_the_id(tmp_path):
    d = _comp(tmp_path)
    train = pd.read_csv(d / "train.csv")
    (d / "train.csv").write_text("," + "label\n" + "".join(f"{i},{lab}\n" for i, lab in zip(train["id"], train["label"])))
    (d / "sample_submission.csv").write_text(",label\n" + "".join(f"s{i},cat\n" for i in range(4)))
    comp = _read(d, tmp_path)
    assert comp.train["id"].tolist()[:2] == ["t0", "t1"] and comp.kind == "label"


def test_classes_the_sample_names_but_training_never_has_are_reported(tmp_path):
    d = _comp(tmp_path)
    df = pd.read_csv(d / "train.csv")
    onehot = pd.DataFrame({"id": df["id"], "cat": (df["label"] == "cat").astype(int),
                           "dog": (df["label"] == "dog").astype(int), "fox": 0})
    onehot.to_csv(d / "train.csv", index=False)
    pd.DataFrame({"id": [f"s{i}" for i in range(4)], "cat": 0.3, "dog": 0.3, "fox": 0.4}).to_csv(
        d / "sample_submission.csv", index=False)
    seen = []
    comp = read(d, Overrides(), scratch=tmp_path / "s", log=seen.append)
    assert comp.kind == "class_proba" and comp.classes == ["cat", "dog", "fox"]
    assert any("fox" in m and "no training row" in m for m in seen)
    assert any(dec.what == "never in training" and dec.value == "fox" for dec in comp.decisions)


def test_the_metric_saved_by_download_is_used(tmp_path):
    d = _comp(tmp_path, classes=("0", "1", "2"), sample_value="0")
    (d / "competition.json").write_text(json.dumps({"competition": "x", "evaluation_metric": "Quadratic Weighted Kappa"}))
    comp = _read(d, tmp_path)
    assert comp.metric == "qwk" and comp.kind == "label"
    assert _read(d, tmp_path, metric="accuracy").metric == "accuracy"


def test_missing_images_name_examples_and_the_parameter(tmp_path):
    d = _comp(tmp_path)
    (d / "train" / "t3.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 12 images listed in train\.csv.*'t3'.*IMAGE_DIR"):
        _read(d, tmp_path)


def test_no_labels_anywhere_is_an_error_saying_what_was_looked_for(tmp_path):
    d = _comp(tmp_path)
    (d / "train.csv").unlink()
    with pytest.raises(ValueError, match=r"cannot find the training labels.*LABELS_FILE"):
        _read(d, tmp_path)


def test_a_bad_target_parameter_lists_the_kinds(tmp_path):
    with pytest.raises(ValueError, match=r"TARGET='multi'.*label, binary_proba, class_proba"):
        _read(_comp(tmp_path), tmp_path, target="multi")


def test_dicom_only_images_are_read_with_pydicom_or_a_clear_message(tmp_path, monkeypatch):
    import importlib.util
    import shutil

    from layouts import make

    from kagglekit_nb.tasks.images import read_image

    layout = make("siim-isic-melanoma-classification", tmp_path / "data", n_train=60, n_test=10)
    shutil.rmtree(layout.data_dir / "jpeg")  # the .dcm copies are all that is left
    comp = _read(layout.data_dir, tmp_path)
    assert all(p.endswith(".dcm") for p in comp.train["path"])
    pixels = read_image(comp.train["path"][0], "RGB")
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.max() > pixels.min()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pydicom" else real(name, *a))
    with pytest.raises(ValueError, match=r"DICOM \(\.dcm\) only; pip install pydicom"):
        _read(layout.data_dir, tmp_path)


def test_a_sample_with_a_subset_of_the_training_label_columns_trains_those(tmp_path):
    d = _comp(tmp_path, n=12)
    df = pd.read_csv(d / "train.csv")
    table = pd.DataFrame({"id": df["id"], "a": [1, 0, 1, 0] * 3, "b": [1, 1, 0, 0] * 3, "c": [0, 1, 1, 0] * 3,
                          "site": ["x", "y", "z"] * 4})  # c and site are not in the sample
    table.to_csv(d / "train.csv", index=False)
    pd.DataFrame({"id": [f"s{i}" for i in range(4)], "b": 0, "a": 0}).to_csv(d / "sample_submission.csv", index=False)
    comp = _read(d, tmp_path)
    assert comp.kind == "multilabel_proba" and comp.classes == ["b", "a"]
    assert comp.y.tolist()[:4] == [[1, 1], [1, 0], [0, 1], [0, 0]]


def test_the_image_index_is_walked_again_after_a_fix_but_not_otherwise(tmp_path, monkeypatch):
    from kagglekit_nb.tasks import layout

    d = _comp(tmp_path)
    (d / "train" / "t3.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"'t3'"):
        _read(d, tmp_path)
    walks = []
    real = layout._Index.__init__
    monkeypatch.setattr(layout._Index, "__init__", lambda self, roots: (walks.append(roots), real(self, roots))[1])
    _png(d / "train" / "t3.png")  # the competitor puts the missing image back and reruns the cell
    assert len(_read(d, tmp_path).train) == 12 and len(walks) == 1
    _read(d, tmp_path)
    assert len(walks) == 1  # nothing changed: the index of the first walk is reused


def test_an_answer_key_next_to_the_data_is_not_taken_for_the_labels(tmp_path):
    d = _comp(tmp_path)
    pd.DataFrame({"id": [f"s{i}" for i in range(4)], "label": ["cat", "dog"] * 2}).to_csv(d / "solution.csv",
                                                                                        index=False)
    assert _read(d, tmp_path).decisions[3].value.startswith("train.csv")
    (d / "train.csv").unlink()
    with pytest.raises(ValueError, match=r"solution\.csv: its ids are the sample's \(test\) ids"):
        _read(d, tmp_path)
