"""Tests for kagglekit_nb.submission: repair, baseline, write_csv, finalize (verify: test_verification)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_verification import (
    BINARY_OK,
    INDEX_SAMPLE,
    LABEL_OK,
    LABELS,
    MULTI_SAMPLE,
    PLANT_LABELS,
    PLANT_SAMPLE,
    WHALE_LABELS,
    WHALE_SAMPLE,
    _labels_for,
    _sample,
    _write,
)

from kagglekit_nb.submission import (
    SubmissionError,
    baseline,
    finalize,
    repair,
    verify,
    write_csv,
    write_verified,
)


# ------------------------------------------------------------------------------------------------
# Repairs: each changes only what it says.


def test_repair_clip_changes_only_out_of_range_cells(tmp_path):
    text = ("image_id,cat,dog,bird\nimg_a,1.7,0.2,0.1\nimg_b,0.1,-0.25,0.1\n"
            "img_c,0.30000000000000004,0.3,0.4\n")
    before = pd.read_csv(_write(tmp_path / "s.csv", text), dtype=str)
    fixed, notes = repair(tmp_path / "s.csv", _sample(tmp_path, "class"), clip=True)
    assert notes == ["clipped 2 probabilities to [0, 1]"]
    assert fixed.loc[0, "cat"] == "1.0" and fixed.loc[1, "dog"] == "0.0"
    changed = fixed != before
    assert int(changed.to_numpy().sum()) == 2
    assert fixed.loc[2, "cat"] == "0.30000000000000004"  # in-range text kept exactly


def test_repair_reorder_changes_no_values(tmp_path):
    text = "id,label\n3,bird\n1,dog\n4,dog\n2,cat\n"
    path = _write(tmp_path / "s.csv", text)
    fixed, notes = repair(path, _sample(tmp_path, "label"), reorder=True)
    assert fixed["id"].tolist() == ["1", "2", "3", "4"]
    assert fixed["label"].tolist() == ["dog", "cat", "bird", "dog"]
    assert notes == ["reordered rows to the sample's id order (4 rows moved) and columns to "
                     "['id', 'label']"]
    before = pd.read_csv(path, dtype=str)
    pd.testing.assert_frame_equal(fixed.sort_values("id").reset_index(drop=True),
                                  before.sort_values("id").reset_index(drop=True))


def test_repair_reorder_columns(tmp_path):
    text = "image_id,bird,cat,dog\nimg_b,0.1,0.1,0.8\nimg_a,0.1,0.7,0.2\nimg_c,0.4,0.3,0.3\n"
    fixed, _ = repair(_write(tmp_path / "s.csv", text), _sample(tmp_path, "class"), reorder=True)
    assert fixed.columns.tolist() == ["image_id", "cat", "dog", "bird"]
    assert fixed.to_numpy().tolist() == [["img_a", "0.7", "0.2", "0.1"],
                                         ["img_b", "0.1", "0.8", "0.1"],
                                         ["img_c", "0.3", "0.3", "0.4"]]


def test_repair_cast_ids_touches_only_ids(tmp_path):
    text = "id,label\n1.0,dog\n 2,cat\n3,bird\n4.000,dog\n"
    path = _write(tmp_path / "s.csv", text)
    fixed, notes = repair(path, _sample(tmp_path, "label"), cast_ids=True)
    assert fixed["id"].tolist() == ["1", "2", "3", "4"]
    assert fixed["label"].tolist() == ["dog", "cat", "bird", "dog"]
    assert notes == ["cast 3 ids to the sample's format (stripped spaces, wrote '1.0' as '1')"]


def test_repair_renormalize_only_rows_off_one(tmp_path):
    text = "image_id,cat,dog,bird\nimg_a,0.7,0.2,0.3\nimg_b,0.1,0.8,0.1\nimg_c,0,0,0\n"
    path = _write(tmp_path / "s.csv", text)
    fixed, notes = repair(path, _sample(tmp_path, "class"), renormalize=True)
    assert notes == ["renormalised 1 rows to sum to 1; 1 all-zero rows set to uniform 1/3"]
    row_a = fixed.loc[0, ["cat", "dog", "bird"]].astype(float).to_numpy()
    np.testing.assert_allclose(row_a, np.array([0.7, 0.2, 0.3]) / 1.2, rtol=1e-15)
    assert fixed.loc[1, ["cat", "dog", "bird"]].tolist() == ["0.1", "0.8", "0.1"]  # untouched text
    assert fixed.loc[2, "cat"] == repr(1 / 3)


def test_repair_fill_nan_with_prior_and_defaults(tmp_path):
    binary = "isic_id,target\nISIC_01,\nISIC_02,0.2\nISIC_03,nan\nISIC_04,0.4\n"
    fixed, notes = repair(_write(tmp_path / "b.csv", binary), _sample(tmp_path, "binary"),
                          fill_nan=True, prior={"target": 0.01})
    assert fixed["target"].tolist() == ["0.01", "0.2", "0.01", "0.4"]
    assert notes == ["filled 2 missing cells (target: prior 0.01)"]

    cls = "image_id,cat,dog,bird\nimg_a,0.7,,0.1\nimg_b,0.1,0.8,0.1\nimg_c,0.3,0.3,0.4\n"
    path = _write(tmp_path / "c.csv", cls)
    fixed, notes = repair(path, _sample(tmp_path, "class"), fill_nan=True)
    assert fixed.loc[0, "dog"] == repr(1 / 3) and fixed.loc[0, "cat"] == "0.7"
    assert "no prior given" in notes[0] and notes[0].startswith("filled 1 missing cells")

    label = "id,label\n1,dog\n2,\n3,bird\n4,dog\n"
    fixed, notes = repair(_write(tmp_path / "l.csv", label), _sample(tmp_path, "label"),
                          fill_nan=True, prior="dog", labels=LABELS)
    assert fixed["label"].tolist() == ["dog", "dog", "bird", "dog"]
    fixed, notes = repair(tmp_path / "l.csv", _sample(tmp_path, "label"), fill_nan=True)
    assert fixed["label"].tolist() == ["dog", "cat", "bird", "dog"]  # the sample's value for id 2
    assert "the sample's value for the same id" in notes[0]


def test_repair_drop_index_then_verifies(tmp_path):
    text = ",id,label\n0,1,dog\n1,2,cat\n2,3,bird\n3,4,dog\n"
    path = _write(tmp_path / "s.csv", text)
    fixed, notes = repair(path, _sample(tmp_path, "label"), drop_index=True)
    assert fixed.columns.tolist() == ["id", "label"]
    assert notes == ["dropped 1 saved index column(s) ['']"]
    out = write_csv(fixed, tmp_path / "fixed.csv")
    assert out.read_text() == LABEL_OK
    assert verify(out, _sample(tmp_path, "label"), labels=LABELS).valid


def test_repair_without_flags_changes_nothing(tmp_path):
    path = _write(tmp_path / "s.csv", "id,label\n3,bird\n1.0,dog\n")
    fixed, notes = repair(path, _sample(tmp_path, "label"))
    assert notes == [] and fixed.to_numpy().tolist() == [["3", "bird"], ["1.0", "dog"]]


def test_repair_rejects_flags_that_do_not_apply(tmp_path):
    path = _write(tmp_path / "s.csv", LABEL_OK)
    with pytest.raises(ValueError, match="clip=True applies to probability formats"):
        repair(path, _sample(tmp_path, "label"), clip=True)
    with pytest.raises(ValueError, match="renormalize=True applies to the 'class_proba' format"):
        repair(path, _sample(tmp_path, "binary"), renormalize=True)
    with pytest.raises(ValueError, match=r"prior has columns \['fish'\]"):
        repair(path, _sample(tmp_path, "class"), fill_nan=True, prior={"fish": 0.1})
    with pytest.raises(ValueError, match="not among the legal labels"):
        repair(path, _sample(tmp_path, "label"), fill_nan=True, prior="horse", labels=LABELS)


# ------------------------------------------------------------------------------------------------
# Baseline and writing.


def test_baseline_label(tmp_path):
    sample = _sample(tmp_path, "label")
    base = baseline(sample, ["dog", "cat", "dog", "bird"])
    assert base.columns.tolist() == ["id", "label"]
    assert base["label"].tolist() == ["dog"] * 4 and base["id"].tolist() == ["1", "2", "3", "4"]
    assert "majority class 'dog'" in base.attrs["note"]
    kept = baseline(sample)
    assert kept["label"].tolist() == ["cat"] * 4
    assert "kept the sample's own values" in kept.attrs["note"]


def test_baseline_class_proba(tmp_path):
    sample = _sample(tmp_path, "class")
    base = baseline(sample, ["cat", "cat", "dog", "bird"])
    assert base.loc[0, ["cat", "dog", "bird"]].tolist() == [0.5, 0.25, 0.25]
    uniform = baseline(sample, [0, 1, 1])
    assert uniform.loc[0, ["cat", "dog", "bird"]].tolist() == [1 / 3] * 3
    assert "no train label matches a column" in uniform.attrs["note"]
    assert "no train labels: uniform" in baseline(sample).attrs["note"]
    # integer classes read by pandas as floats still match columns named "0", "1"
    ints = pd.DataFrame({"id": [1, 2], "0": [0.5, 0.5], "1": [0.5, 0.5]})
    from_floats = baseline(ints, np.array([0.0, 1.0, 1.0, 1.0]))
    assert from_floats.loc[0, ["0", "1"]].tolist() == [0.25, 0.75]


def test_baseline_binary_and_numeric(tmp_path):
    binary = baseline(_sample(tmp_path, "binary"), [0, 0, 0, 1])
    assert binary["target"].tolist() == [0.25] * 4 and "positive rate 0.25" in binary.attrs["note"]
    numeric = baseline(_sample(tmp_path, "numeric"), [100.0, 200.0, 600.0])
    assert numeric["SalePrice"].tolist() == [300.0] * 3
    kept = baseline(_sample(tmp_path, "binary"))
    assert kept["target"].tolist() == ["0.3"] * 4
    assert "kept the sample's own values" in kept.attrs["note"]
    assert baseline(_sample(tmp_path, "binary"), prior=0.002)["target"].tolist() == [0.002] * 4
    with pytest.raises(ValueError, match="train_labels must be numbers"):
        baseline(_sample(tmp_path, "binary"), ["yes", "no"])


@pytest.mark.parametrize("which, train", [
    ("label", ["dog", "cat", "dog"]), ("class", ["cat", "bird"]), ("binary", [0, 1, 1]),
    ("numeric", [1.0, 2.0]), ("digits", [3, 3, 7]),
])
def test_baseline_verifies(tmp_path, which, train):
    sample = _sample(tmp_path, which)
    path = write_csv(baseline(sample, train), tmp_path / "submission.csv")
    assert verify(path, sample, labels=_labels_for(which)).valid


def test_write_csv_atomic_no_index_lf(tmp_path):
    df = pd.DataFrame({"id": [1, 2], "label": ["dog", "cat"]})
    path = write_csv(df, tmp_path / "sub" / "submission.csv")
    assert path.read_bytes() == b"id,label\n1,dog\n2,cat\n"
    assert [p.name for p in path.parent.iterdir()] == ["submission.csv"]
    with pytest.raises(ValueError, match="df must be a pandas DataFrame"):
        write_csv([1, 2], tmp_path / "x.csv")


# ------------------------------------------------------------------------------------------------
# finalize: the closing step.


def test_finalize_valid_writes_verification_json(tmp_path):
    path = _write(tmp_path / "submission.csv", BINARY_OK)
    report = finalize(path, _sample(tmp_path, "binary"), tmp_path / "out")
    assert report.valid
    data = json.loads((tmp_path / "out" / "verification.json").read_text())
    assert data["valid"] is True and data["outcome"] == "valid" and data["errors"] == []
    assert path.read_text() == BINARY_OK


def test_finalize_unrepairable_writes_baseline_and_raises(tmp_path):
    broken = "isic_id,target\nISIC_01,0.1\nISIC_02,0.2\n"
    path = _write(tmp_path / "submission.csv", broken)
    sample = _sample(tmp_path, "binary")
    with pytest.raises(SubmissionError, match="2 ids missing") as info:
        finalize(path, sample, tmp_path, train_labels=[0, 0, 0, 1])
    assert isinstance(info.value, ValueError) and info.value.report.valid is False
    assert (tmp_path / "submission.invalid.csv").read_text() == broken
    assert verify(path, sample).valid
    assert pd.read_csv(path)["target"].tolist() == [0.25] * 4
    data = json.loads((tmp_path / "verification.json").read_text())
    assert data["valid"] is False and data["outcome"] == "baseline"
    assert data["baseline_written"] is True and data["baseline_valid"] is True
    assert "2 ids missing" in data["baseline_reason"] and "positive rate" in data["baseline_note"]


def test_finalize_missing_file_writes_baseline(tmp_path):
    path = tmp_path / "submission.csv"
    with pytest.raises(SubmissionError, match="does not exist"):
        finalize(path, _sample(tmp_path, "label"), tmp_path, labels=LABELS, train_labels=["bird"])
    assert pd.read_csv(path)["label"].tolist() == ["bird"] * 4
    assert not (tmp_path / "submission.invalid.csv").exists()
    assert json.loads((tmp_path / "verification.json").read_text())["baseline_written"] is True


def test_finalize_repairs_when_asked(tmp_path):
    text = "image_id,cat,dog,bird\nimg_c,0.3,0.3,0.4\nimg_a,1.2,0.2,0.1\nimg_b,0.1,0.8,0.1\n"
    path = _write(tmp_path / "submission.csv", text)
    report = finalize(path, _sample(tmp_path, "class"), tmp_path / "out",
                      repair_options={"clip": True, "reorder": True})
    assert report.valid and len(report.warnings) == 1 and "sums to 1.3" in report.warnings[0]
    assert report.repairs[0] == "clipped 1 probabilities to [0, 1]"
    assert path.read_text() == ("image_id,cat,dog,bird\nimg_a,1.0,0.2,0.1\nimg_b,0.1,0.8,0.1\n"
                                "img_c,0.3,0.3,0.4\n")
    data = json.loads((tmp_path / "out" / "verification.json").read_text())
    assert data["outcome"] == "repaired" and data["valid"] is True and len(data["repairs"]) == 2


def test_finalize_repair_not_enough_keeps_original(tmp_path):
    text = "isic_id,target\nISIC_01,1.5\nISIC_02,0.2\n"
    path = _write(tmp_path / "submission.csv", text)
    with pytest.raises(SubmissionError, match="ids missing"):
        finalize(path, _sample(tmp_path, "binary"), tmp_path, repair_options={"clip": True})
    assert (tmp_path / "submission.invalid.csv").read_text() == text  # the original, not the repair
    data = json.loads((tmp_path / "verification.json").read_text())
    assert data["repairs"] == ["clipped 1 probabilities to [0, 1]"]
    assert any(e.startswith("after repair: 2 ids missing") for e in data["errors"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_finalize_rejects_unknown_repair_option(tmp_path):
    with pytest.raises(ValueError, match=r"unknown keys \['clamp'\]"):
        finalize(tmp_path / "s.csv", _sample(tmp_path, "binary"), tmp_path,
                 repair_options={"clamp": True})
    with pytest.raises(ValueError, match=r"repair_options\['clip'\] must be True or False"):
        finalize(tmp_path / "s.csv", _sample(tmp_path, "binary"), tmp_path,
                 repair_options={"clip": "yes"})


def test_the_verification_api_is_importable_from_submission():
    from kagglekit_nb import submission, verification

    for name in ("verify", "VerificationReport", "infer_kind", "register_verifier", "KINDS"):
        assert getattr(submission, name) is getattr(verification, name)
        assert name in submission.__all__


# ------------------------------------------------------------------------------------------------
# The multi-label kinds: repairs, baselines, finalize.

MULTI_COLS = ["ETT - Abnormal", "ETT - Normal", "CVC - Normal"]


def test_repair_multilabel_fill_nan_clip_and_no_renormalize(tmp_path):
    sample = _write(tmp_path / "sample.csv", MULTI_SAMPLE)
    text = ("StudyInstanceUID,ETT - Abnormal,ETT - Normal,CVC - Normal\n"
            "1.2.1,0.1,,1.2\n1.2.2,nan,0.3,0.9\n")
    path = _write(tmp_path / "s.csv", text)
    fixed, notes = repair(path, sample, kind="multilabel_proba", fill_nan=True, clip=True)
    assert fixed[MULTI_COLS].to_numpy().tolist() == [["0.1", "0.5", "1.0"], ["0.5", "0.3", "0.9"]]
    assert notes == ["filled 2 missing cells (ETT - Abnormal: 0.5 (no prior given); "
                     "ETT - Normal: 0.5 (no prior given))", "clipped 1 probabilities to [0, 1]"]
    fixed, notes = repair(path, sample, kind="multilabel_proba", fill_nan=True,
                          prior={"ETT - Abnormal": 0.01, "ETT - Normal": 0.7})
    assert fixed[MULTI_COLS].to_numpy().tolist() == [["0.1", "0.7", "1.2"], ["0.01", "0.3", "0.9"]]
    assert notes == ["filled 2 missing cells (ETT - Abnormal: prior 0.01; ETT - Normal: prior 0.7)"]
    with pytest.raises(ValueError, match="does not apply to the 'multilabel_proba' format: each "
                                         "column is its own yes/no probability.*need not sum to 1"):
        repair(path, sample, kind="multilabel_proba", renormalize=True)


def test_repair_label_list_fill_nan(tmp_path):
    sample = _write(tmp_path / "sample.csv", WHALE_SAMPLE)
    path = _write(tmp_path / "s.csv", "Image,Id\na.jpg,w_1 w_2 w_3 w_4 w_5\nb.jpg,\nc.jpg, \n")
    fixed, notes = repair(path, sample, fill_nan=True)
    assert fixed["Id"].tolist() == ["w_1 w_2 w_3 w_4 w_5"] + ["new_whale w_1 w_2 w_3 w_4"] * 2
    assert notes == ["filled 2 missing cells (Id: the sample's value for the same id "
                     "(no prior given))"]
    fixed, _ = repair(path, sample, fill_nan=True, prior="new_whale w_5", labels=WHALE_LABELS)
    assert fixed["Id"].tolist() == ["w_1 w_2 w_3 w_4 w_5", "new_whale w_5", "new_whale w_5"]
    with pytest.raises(ValueError, match="not among the legal labels"):
        repair(path, sample, fill_nan=True, prior="new_whale w_99", labels=WHALE_LABELS)
    with pytest.raises(ValueError, match="clip=True applies to probability formats"):
        repair(path, sample, clip=True)


def test_baseline_label_list_top_k_by_count_then_text(tmp_path):
    sample = _write(tmp_path / "sample.csv", WHALE_SAMPLE)
    train = ["w_3", "new_whale", "w_2", "new_whale", "w_3", "w_5 w_1", "w_4", "w_1", "w_9"]
    base = baseline(sample, train)
    # counts: new_whale 2, w_1 2, w_3 2, then w_2, w_4, w_5, w_9 once each (ties by label text)
    assert base["Id"].tolist() == ["new_whale w_1 w_3 w_2 w_4"] * 3
    assert base["Image"].tolist() == ["a.jpg", "b.jpg", "c.jpg"]
    assert base.attrs["note"] == ("label_list baseline: the 5 most frequent labels "
                                  "'new_whale w_1 w_3 w_2 w_4' of 9 train rows (the sample lists 5 "
                                  "per row)")
    legal_only = baseline(sample, train, labels=["w_9", "w_5", "w_4"])
    assert legal_only["Id"].tolist() == ["w_4 w_5 w_9"] * 3
    assert "4 labels not legal left out (e.g. 'new_whale', 'w_1', 'w_2', 'w_3')" \
        in legal_only.attrs["note"]
    kept = baseline(sample)
    assert kept["Id"].tolist() == ["new_whale w_1 w_2 w_3 w_4"] * 3
    assert kept.attrs["note"] == ("label_list baseline: no train labels: kept the sample's own "
                                  "values")


def test_baseline_label_list_majority_labels_else_most_frequent(tmp_path):
    sample = _write(tmp_path / "sample.csv", PLANT_SAMPLE)
    train = ["scab", "scab rust", "rust scab frog_eye_leaf_spot", "rust", "healthy"]
    base = baseline(sample, train, kind="label_list")
    assert base["labels"].tolist() == ["rust scab"] * 3  # each in 3 of 5 rows: ties by text
    assert "the labels present in more than half of 5 train rows: 'rust scab'" in base.attrs["note"]
    few = baseline(sample, ["healthy", "scab", "rust frog_eye_leaf_spot", "rust", "healthy"],
                   kind="label_list")
    assert few["labels"].tolist() == ["healthy"] * 3  # healthy and rust in 2 of 5: text decides
    assert few.attrs["note"] == ("label_list baseline: the most frequent label 'healthy' of 5 train "
                                 "rows (none is in more than half)")
    with pytest.raises(ValueError, match="holds no usable label"):
        baseline(sample, [None, float("nan")], kind="label_list")


def test_baseline_multilabel_proba_positive_rates(tmp_path):
    sample = _write(tmp_path / "sample.csv", MULTI_SAMPLE)
    # RANZCR's labels have spaces in their names, so its train labels come as a 0/1 table
    table = pd.DataFrame({"StudyInstanceUID": ["t1", "t2", "t3", "t4"],
                          "CVC - Normal": [1, 1, 1, 0],
                          "ETT - Abnormal": [0, 0, 0, 1], "ETT - Normal": [1, 0, 0, 0],
                          "PatientID": ["p", "q", "r", "s"]})
    base = baseline(sample, table, kind="multilabel_proba")
    assert base.loc[0, MULTI_COLS].tolist() == [0.25, 0.25, 0.75]
    assert base.attrs["note"] == ("multilabel_proba baseline: each column's positive rate over 4 "
                                  "train rows")
    array = baseline(sample, np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 1]]),
                     kind="multilabel_proba")
    assert array.loc[1, MULTI_COLS].tolist() == [0.75, 0.25, 0.25]
    assert baseline(sample, [[0, 1, 1], [0, 1, 0]], kind="multilabel_proba").loc[
        0, MULTI_COLS].tolist() == [0.0, 1.0, 0.5]
    with pytest.raises(ValueError, match=r"train_labels has no columns \['ETT - Normal'\]"):
        baseline(sample, table.drop(columns="ETT - Normal"), kind="multilabel_proba")
    with pytest.raises(ValueError, match=r"shape \(2, 2\).*3 prediction columns"):
        baseline(sample, [[0, 1], [1, 1]], kind="multilabel_proba")
    with pytest.raises(ValueError, match="column 'ETT - Normal' must hold 0/1.*'3'"):
        baseline(sample, [[0, 3, 1], [1, 1, 0]], kind="multilabel_proba")
    with pytest.raises(ValueError, match="names with spaces.*pass the 0/1 table"):
        baseline(sample, ["ETT - Abnormal", "CVC - Normal"], kind="multilabel_proba")


def test_baseline_multilabel_proba_from_label_strings(tmp_path):
    sample = pd.DataFrame({"image_name": ["a", "b"], "clear": [0.5, 0.5], "haze": [0.5, 0.5],
                           "primary": [0.5, 0.5]})
    base = baseline(sample, ["clear primary", "haze primary", "primary water", "clear"],
                    kind="multilabel_proba")
    assert base.loc[0, ["clear", "haze", "primary"]].tolist() == [0.5, 0.25, 0.75]
    assert base.attrs["note"] == ("multilabel_proba baseline: each column's positive rate over 4 "
                                  "train rows (1 labels matching no column were ignored, e.g. "
                                  "'water')")
    with pytest.raises(ValueError, match="no train label matches a prediction column"):
        baseline(sample, ["cloudy", "water"], kind="multilabel_proba")


@pytest.mark.parametrize("sample_text, kind, labels, train", [
    (WHALE_SAMPLE, None, WHALE_LABELS, ["w_1", "new_whale", "w_1 w_2"]),  # only 3 labels: a warning
    (PLANT_SAMPLE, "label_list", PLANT_LABELS, ["scab rust", "rust"]),
    (MULTI_SAMPLE, "multilabel_proba", None, [[1, 0, 1], [0, 0, 1]]),
])
def test_multi_label_baselines_verify(tmp_path, sample_text, kind, labels, train):
    sample = _write(tmp_path / "sample.csv", sample_text)
    path = write_csv(baseline(sample, train, kind=kind, labels=labels), tmp_path / "submission.csv")
    report = verify(path, sample, labels=labels, kind=kind)
    assert report.valid and report.errors == [], report.format()
    assert report.kind == (kind or "label_list")


def test_finalize_label_list_writes_top_k_baseline(tmp_path):
    sample = _write(tmp_path / "sample.csv", WHALE_SAMPLE)
    broken = "Image,Id\na.jpg,new_whale w_1 w_2 w_3 w_4 w_5\nb.jpg,w_1\nc.jpg,w_2\n"
    path = _write(tmp_path / "submission.csv", broken)
    train = ["new_whale", "new_whale", "w_1", "w_2", "w_3", "w_4", "w_5", "w_5"]
    with pytest.raises(SubmissionError, match="list more than 5 labels"):
        finalize(path, sample, tmp_path, labels=WHALE_LABELS, train_labels=train)
    assert (tmp_path / "submission.invalid.csv").read_text() == broken
    assert pd.read_csv(path)["Id"].tolist() == ["new_whale w_5 w_1 w_2 w_3"] * 3
    data = json.loads((tmp_path / "verification.json").read_text())
    assert data["kind"] == "label_list" and data["baseline_valid"] is True


def test_write_verified_multilabel_needs_the_kind(tmp_path):
    sample = _write(tmp_path / "sample.csv", MULTI_SAMPLE)
    df = pd.DataFrame({"StudyInstanceUID": ["1.2.1", "1.2.2"], "ETT - Abnormal": [0.9, 0.1],
                       "ETT - Normal": [0.8, 1.3], "CVC - Normal": [0.7, 0.2]})
    path = tmp_path / "submission.csv"
    report = write_verified(df, path, sample, kind="multilabel_proba")
    assert not report.valid and not path.exists()
    assert "1 probabilities above 1 in column 'ETT - Normal'" in report.errors[0]
    df.loc[1, "ETT - Normal"] = 0.3
    report = write_verified(df, path, sample, kind="multilabel_proba")
    assert report.valid and report.warnings == [] and path.is_file()  # rows sum to 2.4 and 0.6


def test_repair_keeps_an_unnamed_id_column_by_position(tmp_path):
    sample = _write(tmp_path / "sample.csv", INDEX_SAMPLE)
    path = _write(tmp_path / "s.csv", "Unnamed: 0,label\n2,dog\n0,cat\n1,\n")
    fixed, notes = repair(path, sample, reorder=True, fill_nan=True, drop_index=True)
    assert fixed.columns.tolist() == ["Unnamed: 0", "label"]  # the id column, not a saved index
    assert fixed.to_numpy().tolist() == [["0", "cat"], ["1", "cat"], ["2", "dog"]]
    renamed, notes = repair(path, sample, cast_ids=True)
    assert renamed.columns.tolist() == ["", "label"]
    assert notes[0] == "renamed the id column 'Unnamed: 0' to the sample's ''"
