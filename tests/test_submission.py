"""Tests for kagglekit_nb.submission: verify, repair, baseline, write_csv, finalize."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kagglekit_nb import submission as sub
from kagglekit_nb.submission import (
    SubmissionError,
    VerificationReport,
    baseline,
    finalize,
    infer_kind,
    register_verifier,
    repair,
    verify,
    write_csv,
)

# Sample submissions, one per format. Tests write them with tmp_path.
SAMPLES = {
    "label": "id,label\n1,cat\n2,cat\n3,cat\n4,cat\n",
    "class": ("image_id,cat,dog,bird\n"
              "img_a,0.25,0.25,0.5\nimg_b,0.25,0.25,0.5\nimg_c,0.25,0.25,0.5\n"),
    "binary": "isic_id,target\nISIC_01,0.3\nISIC_02,0.3\nISIC_03,0.3\nISIC_04,0.3\n",
    "numeric": "Id,SalePrice\n1461,169277.05\n1462,169277.05\n1463,169277.05\n",
    "digits": "ImageId,Label\n1,0\n2,0\n3,0\n",
}
LABELS = ["cat", "dog", "bird"]
LABEL_OK = "id,label\n1,dog\n2,cat\n3,bird\n4,dog\n"
CLASS_OK = "image_id,cat,dog,bird\nimg_a,0.7,0.2,0.1\nimg_b,0.1,0.8,0.1\nimg_c,0.3,0.3,0.4\n"
BINARY_OK = "isic_id,target\nISIC_01,0.91\nISIC_02,0.02\nISIC_03,0.5\nISIC_04,0.13\n"


def _write(path: Path, text: str) -> Path:
    """Write text byte for byte (no newline translation)."""
    path.write_bytes(text.encode("utf-8"))
    return path


def _sample(tmp_path: Path, which: str) -> Path:
    return _write(tmp_path / f"sample_{which}.csv", SAMPLES[which])


def _labels_for(which: str) -> list[str] | None:
    return LABELS if which == "label" else None


# ------------------------------------------------------------------------------------------------
# The battery: broken submissions, each with the phrase its error must contain.

BROKEN = [
    ("missing-file", "label", None, "does not exist"),
    ("empty-file", "label", "", "is empty (0 bytes)"),
    ("blank-lines-only", "binary", "\n\n\n", "contains no CSV data"),
    ("header-only", "label", "id,label\n", "no data rows"),
    ("semicolon", "label", "id;label\n1;dog\n2;cat\n3;bird\n4;dog\n", "semicolon-separated"),
    ("tab", "binary", "isic_id\ttarget\nISIC_01\t0.1\n", "tab-separated"),
    ("no-header", "label", "1,dog\n2,cat\n3,bird\n4,dog\n", "no header row"),
    ("no-header-proba", "class", "img_a,0.7,0.2,0.1\nimg_b,0.1,0.8,0.1\nimg_c,0.3,0.3,0.4\n",
     "no header row"),
    ("saved-index", "label", ",id,label\n0,1,dog\n1,2,cat\n2,3,bird\n3,4,dog\n",
     "saved DataFrame index"),
    ("saved-index-unnamed-0", "binary",
     "Unnamed: 0,isic_id,target\n0,ISIC_01,0.1\n1,ISIC_02,0.2\n2,ISIC_03,0.3\n3,ISIC_04,0.4\n",
     "saved DataFrame index"),
    ("missing-class-column", "class",
     "image_id,cat,dog\nimg_a,0.7,0.3\nimg_b,0.1,0.9\nimg_c,0.5,0.5\n",
     "column(s) missing: ['bird']"),
    ("extra-column", "label", "id,label,score\n1,dog,3\n2,cat,1\n3,bird,2\n4,dog,3\n",
     "extra column(s) not in the sample: ['score']"),
    ("wrong-column-name", "label", "id,Label\n1,dog\n2,cat\n3,bird\n4,dog\n",
     "should be named 'label'"),
    ("duplicate-column", "label", "id,label,label\n1,dog,dog\n2,cat,cat\n3,bird,bird\n4,dog,dog\n",
     "appears 2 times"),
    ("id-as-float", "label",
     "id,label\n1.0,dog\n2.0,cat\n3.0,bird\n4.0,dog\n", "written as floats"),
    ("id-whitespace", "label", "id,label\n1,dog\n 2,cat\n3 ,bird\n4,dog\n",
     "leading or trailing spaces"),
    ("row-index-instead-of-id", "binary", "isic_id,target\n0,0.1\n1,0.2\n2,0.3\n3,0.4\n",
     "row number was probably written"),
    ("missing-ids", "binary", "isic_id,target\nISIC_01,0.1\nISIC_02,0.2\nISIC_03,0.3\n",
     "1 ids missing from the submission (e.g. ISIC_04)"),
    ("extra-ids", "binary",
     "isic_id,target\nISIC_01,0.1\nISIC_02,0.2\nISIC_03,0.3\nISIC_04,0.4\nISIC_99,0.5\n",
     "1 ids not in the sample (e.g. ISIC_99)"),
    ("duplicated-ids", "label", "id,label\n1,dog\n2,cat\n3,bird\n3,dog\n", "appear more than once"),
    ("fewer-rows", "label", "id,label\n1,dog\n2,cat\n", "2 rows but the sample has 4"),
    ("nan-text", "binary", "isic_id,target\nISIC_01,nan\nISIC_02,0.2\nISIC_03,0.3\nISIC_04,0.4\n",
     "1 missing values (NaN or empty cells)"),
    ("empty-cell", "class",
     "image_id,cat,dog,bird\nimg_a,0.7,,0.1\nimg_b,0.1,0.8,0.1\nimg_c,0.3,0.3,0.4\n",
     "missing values (NaN or empty cells) in column 'dog'"),
    ("short-row-missing-class", "class",
     "image_id,cat,dog,bird\nimg_a,0.7,0.2,0.1\nimg_b,0.1,0.8,0.1\nimg_c,0.3,0.3\n",
     "missing values (NaN or empty cells) in column 'bird'"),
    ("too-many-fields", "label",
     "id,label\n1,dog\n2,cat,oops\n3,bird\n4,dog\n", "not a well-formed CSV"),
    ("inf", "binary", "isic_id,target\nISIC_01,inf\nISIC_02,0.2\nISIC_03,0.3\nISIC_04,0.4\n",
     "infinite values"),
    ("inf-regression", "numeric",
     "Id,SalePrice\n1461,-inf\n1462,1.5e5\n1463,2e5\n", "infinite values"),
    ("string-in-numeric", "class",
     "image_id,cat,dog,bird\nimg_a,high,0.2,0.1\nimg_b,0.1,0.8,0.1\nimg_c,0.3,0.3,0.4\n",
     "non-numeric values in column 'cat'"),
    ("proba-above-1", "class",
     "image_id,cat,dog,bird\nimg_a,1.7,0.2,0.1\nimg_b,0.1,0.8,0.1\nimg_c,0.3,0.3,0.4\n",
     "probabilities above 1 in column 'cat'"),
    ("negative-proba", "binary",
     "isic_id,target\nISIC_01,-0.2\nISIC_02,0.2\nISIC_03,0.3\nISIC_04,0.4\n",
     "probabilities below 0"),
    ("binary-target-2", "binary", "isic_id,target\nISIC_01,2.0\nISIC_02,1\nISIC_03,0\nISIC_04,1\n",
     "probabilities above 1"),
    ("all-nan-column", "binary", "isic_id,target\nISIC_01,\nISIC_02,\nISIC_03,\nISIC_04,\n",
     "is entirely empty"),
    ("label-outside-set", "label", "id,label\n1,dog\n2,horse\n3,bird\n4,dog\n", "not legal labels"),
    ("label-indices-not-names", "label",
     "id,label\n1,0\n2,1\n3,2\n4,0\n", "look like class indices"),
    ("label-with-spaces", "label", "id,label\n1, dog\n2,cat\n3,bird\n4,dog\n", "strip the spaces"),
    ("label-empty", "label", "id,label\n1,dog\n2,\n3,bird\n4,dog\n", "missing values"),
    ("int-label-as-probability", "digits", "ImageId,Label\n1,0.7\n2,3\n3,9\n",
     "not integer class labels"),
]


@pytest.mark.parametrize("which, text, phrase", [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_broken_submission_is_invalid_with_reason(tmp_path, which, text, phrase):
    path = tmp_path / "submission.csv"
    if text is not None:
        _write(path, text)
    report = verify(path, _sample(tmp_path, which), labels=_labels_for(which))
    assert report.valid is False
    assert any(phrase in e for e in report.errors), report.format()


VALID = [
    ("exact-sample", "label", SAMPLES["label"], None),
    ("label-good", "label", LABEL_OK, None),
    ("shuffled-rows", "label", "id,label\n3,bird\n1,dog\n4,dog\n2,cat\n", "different order"),
    ("crlf", "label", LABEL_OK.replace("\n", "\r\n"), None),
    ("quoted-fields", "label", '"id","label"\n"1","dog"\n"2","cat"\n"3","bird"\n"4","dog"\n', None),
    ("no-trailing-newline", "label", LABEL_OK.rstrip("\n"), None),
    ("utf8-bom", "label", "\ufeff" + LABEL_OK, None),
    ("class-good-string-ids", "class", CLASS_OK, None),
    ("reordered-columns", "class",
     "image_id,bird,cat,dog\nimg_a,0.1,0.7,0.2\nimg_b,0.1,0.1,0.8\nimg_c,0.4,0.3,0.3\n", None),
    ("class-quoted-crlf", "class",
     CLASS_OK.replace("img_a", '"img_a"').replace("\n", "\r\n"), None),
    ("rows-not-summing-to-1", "class",
     "image_id,cat,dog,bird\nimg_a,0.7,0.2,0.3\nimg_b,0.1,0.8,0.1\nimg_c,0.3,0.3,0.4\n",
     "do not sum to 1"),
    ("binary-good", "binary", BINARY_OK, None),
    ("binary-hard-0-1", "binary",
     "isic_id,target\nISIC_01,1\nISIC_02,0\nISIC_03,0\nISIC_04,1\n", None),
    ("binary-scientific", "binary",
     "isic_id,target\nISIC_01,1e-05\nISIC_02,0\nISIC_03,.5\nISIC_04,1.0\n",
     None),
    ("integer-ids-regression", "numeric",
     "Id,SalePrice\n1461,120000\n1462,1.5e5\n1463,201000.5\n", None),
    ("digit-labels", "digits", "ImageId,Label\n1,7\n2,0\n3,9\n", None),
]


@pytest.mark.parametrize("which, text, warning", [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_submission_passes(tmp_path, which, text, warning):
    path = _write(tmp_path / "submission.csv", text)
    report = verify(path, _sample(tmp_path, which), labels=_labels_for(which))
    assert report.valid is True, report.format()
    assert report.errors == []
    if warning is None:
        assert report.warnings == []
    else:
        assert len(report.warnings) == 1 and warning in report.warnings[0]


def test_battery_is_large_enough():
    assert len(BROKEN) >= 25 and len(VALID) >= 8
    assert {c[1] for c in BROKEN} >= {"label", "class", "binary"}
    assert {c[1] for c in VALID} >= {"label", "class", "binary"}


# ------------------------------------------------------------------------------------------------
# Format inference and arguments.


@pytest.mark.parametrize("which, labels, expected", [
    ("label", None, "label"),
    ("class", None, "class_proba"),
    ("binary", None, "binary_proba"),
    ("numeric", None, "numeric"),
    ("digits", None, "label"),          # all-0 integer column named Label: class labels
    ("binary", LABELS, "label"),        # labels given with one target column: a label format
], ids=["strings", "per-class", "isic", "regression", "digit-recognizer", "labels-given"])
def test_infer_kind(tmp_path, which, labels, expected):
    assert infer_kind(_sample(tmp_path, which), labels) == expected


def test_infer_kind_integer_columns():
    ints = pd.DataFrame({"id": [1, 2, 3], "y": [0, 4, 2]})
    hard01 = pd.DataFrame({"id": [1, 2], "target": [0, 1]})
    assert infer_kind(ints) == "label"
    assert infer_kind(hard01) == "binary_proba"
    with pytest.raises(ValueError, match="cannot infer the submission format"):
        infer_kind(pd.DataFrame({"id": [1], "a": ["x"], "b": ["y"]}))


def test_kind_override_and_dataframe_sample(tmp_path):
    text = "isic_id,target\nISIC_01,3.5\nISIC_02,2\nISIC_03,0\nISIC_04,1\n"
    path = _write(tmp_path / "s.csv", text)
    sample_df = pd.read_csv(_sample(tmp_path, "binary"))
    assert verify(path, sample_df).valid is False
    report = verify(path, sample_df, kind="numeric")
    assert report.valid is True and report.kind == "numeric"
    assert report.sample == "the sample (DataFrame)"


def test_bad_arguments_raise(tmp_path):
    path = _write(tmp_path / "s.csv", LABEL_OK)
    with pytest.raises(FileNotFoundError, match="sample='.*nope.csv' does not exist"):
        verify(path, tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="labels must be a list"):
        verify(path, _sample(tmp_path, "label"), labels="cat,dog")
    with pytest.raises(ValueError, match=r"kind='code_package' is not a known.*'binary_proba'"):
        verify(path, _sample(tmp_path, "label"), kind="code_package")


def test_stats_count_ids_with_examples(tmp_path):
    text = "id,label\n1,dog\n2,cat\n2,cat\n9,cat\n"
    report = verify(_write(tmp_path / "s.csv", text), _sample(tmp_path, "label"), labels=LABELS)
    assert report.stats["rows"] == 4 and report.stats["sample_rows"] == 4
    assert (report.stats["missing_ids"], report.stats["extra_ids"], report.stats["duplicate_ids"]) \
        == (2, 1, 1)
    assert report.stats["examples"] == {"missing_ids": ["3", "4"], "extra_ids": ["9"],
                                        "duplicate_ids": ["2"]}
    assert any("2 ids missing from the submission (e.g. 3, 4): predict every id in sample_label.csv"
               == e for e in report.errors)


# ------------------------------------------------------------------------------------------------
# The report.


def test_report_json_and_format(tmp_path):
    path = _write(tmp_path / "s.csv", "id,label\n1,dog\n2,horse\n3,bird\n4,dog\n")
    report = verify(path, _sample(tmp_path, "label"), labels=LABELS)
    out = report.to_json(tmp_path / "out" / "report.json")
    assert json.loads(out.read_text()) == report.to_dict()
    assert json.loads(json.dumps(report.to_dict()))["valid"] is False
    assert [p.name for p in out.parent.iterdir()] == ["report.json"]  # no temp file left
    text = str(report)
    assert text == report.format()
    assert text.splitlines()[0] == f"{path}: INVALID (label format, 1 error(s), 0 warning(s))"
    assert "  - 1 values in column 'label' are not legal labels" in text


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


# ------------------------------------------------------------------------------------------------
# The registry of submission kinds.


def test_register_verifier_for_a_new_kind(tmp_path, monkeypatch):
    monkeypatch.setattr(sub, "_VERIFIERS", dict(sub._VERIFIERS))
    seen = []

    def check_package(path, sample, labels):
        seen.append((path, sample, labels))
        ok = (path / "solution.py").is_file()
        return VerificationReport(valid=ok, kind="code_package", submission=str(path),
                                  errors=[] if ok else ["solution.py is missing: add it"])

    register_verifier("code_package", check_package)
    package = tmp_path / "package"
    package.mkdir()
    report = verify(package, None, kind="code_package")
    assert report.valid is False and report.errors == ["solution.py is missing: add it"]
    assert seen == [(package, None, None)]
    with pytest.raises(ValueError, match="already registered"):
        register_verifier("code_package", check_package)
    with pytest.raises(ValueError, match="must be callable"):
        register_verifier("other", "not a function")
    with pytest.raises(SubmissionError, match="solution.py is missing"):
        finalize(package, None, tmp_path, kind="code_package")
    assert json.loads((tmp_path / "verification.json").read_text())["baseline_written"] is False
