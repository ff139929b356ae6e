"""Tests for kagglekit_nb.folds: the split made once and reused, and the fold registry."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kagglekit_nb.folds import FOLDS_FILE, REGISTRY_FILE, FoldRegistry, make_folds


def _data(n_per_class=(20, 15, 10)):
    labels = [c for c, n in zip("abc", n_per_class) for _ in range(n)]
    ids = [f"img{i:03d}" for i in range(len(labels))]
    return pd.Series(ids), pd.Series(labels)


def test_stratified_folds_hold_every_class_and_are_balanced(tmp_path):
    ids, labels = _data()
    folds = make_folds(ids, labels, n_splits=5, seed=0, path=tmp_path / FOLDS_FILE)
    assert list(folds.index) == list(ids.index)
    assert folds.name == "fold"
    assert sorted(folds.unique()) == [0, 1, 2, 3, 4]
    sizes = folds.value_counts()
    assert sizes.max() - sizes.min() <= 1
    table = pd.crosstab(folds, labels)
    assert (table > 0).all().all()  # every fold has every class
    for cls, n in labels.value_counts().items():  # each class spread as evenly as possible
        assert table[cls].max() - table[cls].min() <= 1, cls


def test_split_depends_on_seed(tmp_path):
    ids, labels = _data()
    a = make_folds(ids, labels, n_splits=5, seed=0, path=tmp_path / "a" / FOLDS_FILE)
    b = make_folds(ids, labels, n_splits=5, seed=0, path=tmp_path / "b" / FOLDS_FILE)
    c = make_folds(ids, labels, n_splits=5, seed=1, path=tmp_path / "c" / FOLDS_FILE)
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()


def test_split_is_written_once_and_the_saved_split_wins(tmp_path):
    ids, labels = _data()
    path = tmp_path / "run" / FOLDS_FILE
    first = make_folds(ids, labels, n_splits=5, seed=0, path=path)
    saved = pd.read_csv(path, dtype={"id": str})
    assert list(saved.columns) == ["id", "fold"]
    assert saved["id"].tolist() == ids.tolist()
    assert saved["fold"].tolist() == first.tolist()
    text = path.read_text()
    again = make_folds(ids, labels, n_splits=5, seed=123, path=path)  # another seed after a restart
    assert again.tolist() == first.tolist()
    assert path.read_text() == text
    assert not list(path.parent.glob("*.tmp"))


def test_saved_split_is_matched_by_id_not_by_row_order(tmp_path):
    ids, labels = _data()
    path = tmp_path / FOLDS_FILE
    first = pd.Series(make_folds(ids, labels, n_splits=4, seed=0, path=path).to_numpy(), index=ids)
    order = np.random.default_rng(0).permutation(len(ids))
    shuffled_ids = pd.Series(ids.to_numpy()[order], index=np.arange(100, 100 + len(ids)))
    again = make_folds(shuffled_ids, labels.iloc[order].reset_index(drop=True), n_splits=4, seed=0, path=path)
    assert list(again.index) == list(shuffled_ids.index)
    assert again.tolist() == first.loc[shuffled_ids].tolist()


def test_integer_and_zero_padded_ids_survive_the_round_trip(tmp_path):
    ids = pd.Series(["007", "08", "9", "10", "NA", "11", "12", "13"])
    path = tmp_path / FOLDS_FILE
    first = make_folds(ids, None, n_splits=2, seed=0, path=path)
    again = make_folds(ids, None, n_splits=2, seed=0, path=path)
    assert again.tolist() == first.tolist()
    int_ids = pd.Series(range(1000, 1010))
    p2 = tmp_path / "int" / FOLDS_FILE
    a = make_folds(int_ids, None, n_splits=3, seed=0, path=p2)
    assert make_folds(int_ids, None, n_splits=3, seed=0, path=p2).tolist() == a.tolist()


def test_other_ids_are_refused(tmp_path):
    ids, labels = _data()
    path = tmp_path / FOLDS_FILE
    make_folds(ids, labels, n_splits=5, seed=0, path=path)
    other = ids.str.replace("img", "pic")
    with pytest.raises(ValueError, match="OUTPUT_DIR") as info:
        make_folds(other, labels, n_splits=5, seed=0, path=path)
    assert FOLDS_FILE in str(info.value)
    fewer = ids.iloc[:-1]
    with pytest.raises(ValueError, match="OUTPUT_DIR"):
        make_folds(fewer, labels.iloc[:-1], n_splits=5, seed=0, path=path)


def test_other_number_of_folds_is_refused(tmp_path):
    ids, labels = _data()
    path = tmp_path / FOLDS_FILE
    make_folds(ids, labels, n_splits=5, seed=0, path=path)
    with pytest.raises(ValueError, match="OUTPUT_DIR") as info:
        make_folds(ids, labels, n_splits=3, seed=0, path=path)
    assert "FOLDS=3" in str(info.value)


def test_rarest_class_smaller_than_folds_is_refused(tmp_path):
    ids, labels = _data((20, 15, 3))
    path = tmp_path / FOLDS_FILE
    with pytest.raises(ValueError, match=r"FOLDS=5.*'c'.*at most 3"):
        make_folds(ids, labels, n_splits=5, seed=0, path=path)
    assert not path.exists()


@pytest.mark.parametrize("n_splits", [1, 0, -2, True, 2.0, "5"])
def test_bad_number_of_folds(tmp_path, n_splits):
    ids, labels = _data()
    with pytest.raises(ValueError, match=r"FOLDS=.*>= 2"):
        make_folds(ids, labels, n_splits=n_splits, seed=0, path=tmp_path / FOLDS_FILE)


def test_unlabelled_folds_are_balanced(tmp_path):
    ids = pd.Series([f"x{i}" for i in range(23)])
    folds = make_folds(ids, None, n_splits=4, seed=0, path=tmp_path / FOLDS_FILE)
    sizes = folds.value_counts()
    assert sorted(sizes.index) == [0, 1, 2, 3]
    assert sizes.max() - sizes.min() <= 1


@pytest.mark.parametrize("with_labels", [True, False])
def test_groups_stay_in_one_fold(tmp_path, with_labels):
    rng = np.random.default_rng(0)
    groups = pd.Series(np.repeat(np.arange(30), 4))  # 30 patients, 4 images each
    labels = pd.Series(np.where(groups % 3 == 0, "sick", "well")) if with_labels else None
    ids = pd.Series([f"i{k}" for k in rng.permutation(len(groups))])
    folds = make_folds(ids, labels, n_splits=5, seed=0, path=tmp_path / FOLDS_FILE, groups=groups)
    per_group = folds.groupby(groups).nunique()
    assert (per_group == 1).all()
    assert sorted(folds.unique()) == [0, 1, 2, 3, 4]
    if with_labels:
        assert (pd.crosstab(folds, labels) > 0).all().all()


# --------------------------------------------------------------------------- FoldRegistry


def test_registry_marks_and_persists_across_instances(tmp_path):
    reg = FoldRegistry(tmp_path)
    assert reg.done() == [] and not reg.is_done(0) and reg.get(0) is None
    reg.mark(0, "done", score=np.float32(0.75), checkpoint="fold0.pt")
    reg.mark(1, "partial", epochs_done=2)
    reg.mark(10, "done", score=0.5)
    reg.mark(2, "done", score=0.6)
    assert reg.is_done(0) and not reg.is_done(1) and reg.is_done(2)
    assert reg.done() == [0, 2, 10]  # numeric order, not text order

    again = FoldRegistry(tmp_path)
    assert again.done() == [0, 2, 10]
    assert again.get(0) == {"status": "done", "score": 0.75, "checkpoint": "fold0.pt"}
    assert again.get(1) == {"status": "partial", "epochs_done": 2}
    on_disk = json.loads((tmp_path / REGISTRY_FILE).read_text())
    assert on_disk["0"]["score"] == 0.75
    assert not list(tmp_path.glob("*.tmp"))


def test_registry_partial_then_done_overwrites(tmp_path):
    reg = FoldRegistry(tmp_path)
    reg.mark(3, "partial", epochs_done=1)
    reg.mark(3, "done", score=0.9)
    assert FoldRegistry(tmp_path).get(3) == {"status": "done", "score": 0.9}


@pytest.mark.parametrize("status", ["finished", "DONE", "", None])
def test_registry_rejects_bad_status(tmp_path, status):
    reg = FoldRegistry(tmp_path)
    with pytest.raises(ValueError, match="status="):
        reg.mark(0, status)
    assert not (tmp_path / REGISTRY_FILE).exists()
