"""Tests for kagglekit_nb.verification: verify, the battery of broken and valid files, infer_kind,
the report, and the registry of submission kinds."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from kagglekit_nb import verification
from kagglekit_nb.submission import SubmissionError, finalize
from kagglekit_nb.verification import VerificationReport, infer_kind, register_verifier, verify


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


def test_missing_extra_and_repeated_ids_are_counted_from_one_pass(tmp_path):
    sample = _write(tmp_path / "sample.csv", "id,label\n1,cat\n2,cat\n3,cat\n4,cat\n5,cat\n")
    text = "id,label\n1,dog\n2,cat\n2,cat\n2,cat\n5,dog\n7,cat\n7,cat\n"
    report = verify(_write(tmp_path / "s.csv", text), sample, labels=LABELS)
    assert (report.stats["missing_ids"], report.stats["extra_ids"], report.stats["duplicate_ids"]) == (2, 1, 2)
    assert report.stats["examples"] == {"missing_ids": ["3", "4"], "extra_ids": ["7"],
                                        "duplicate_ids": ["2", "7"]}
    assert "2 ids appear more than once (3 surplus rows, e.g. 2, 7): keep one row per id " \
           "(df.drop_duplicates('id'))" in report.errors
    assert "the submission has 7 rows but the sample has 5: write exactly one row per sample id" in report.errors
    same_ids_other_order = verify(_write(tmp_path / "o.csv", "id,label\n2,cat\n1,dog\n3,cat\n4,cat\n5,cat\n"),
                                  sample, labels=LABELS)
    assert same_ids_other_order.valid and "different order" in same_ids_other_order.warnings[0]
    assert verify(_write(tmp_path / "k.csv", "id,label\n1,dog\n2,cat\n3,cat\n4,cat\n5,cat\n"), sample,
                  labels=LABELS).warnings == []


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
# The registry of submission kinds.


def test_register_verifier_for_a_new_kind(tmp_path, monkeypatch):
    monkeypatch.setattr(verification, "_VERIFIERS", dict(verification._VERIFIERS))
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


# ------------------------------------------------------------------------------------------------
# The multi-label kinds: label_list (space-separated labels) and multilabel_proba.

WHALE_SAMPLE = ("Image,Id\n"
                "a.jpg,new_whale w_1 w_2 w_3 w_4\nb.jpg,new_whale w_1 w_2 w_3 w_4\n"
                "c.jpg,new_whale w_1 w_2 w_3 w_4\n")
WHALE_LABELS = ["new_whale", "w_1", "w_2", "w_3", "w_4", "w_5"]
WHALE_OK = ("Image,Id\n"
            "a.jpg,w_5 new_whale w_1 w_2 w_3\nb.jpg,new_whale w_4 w_3 w_2 w_1\n"
            "c.jpg,w_1 w_2 w_3 w_4 w_5\n")
PLANT_SAMPLE = "image,labels\nx.jpg,healthy\ny.jpg,healthy\nz.jpg,healthy\n"  # one label per cell
PLANT_LABELS = ["healthy", "scab", "rust", "frog_eye_leaf_spot", "complex", "powdery_mildew"]
PLANT_OK = "image,labels\nx.jpg,scab frog_eye_leaf_spot\ny.jpg,healthy\nz.jpg,rust complex\n"
MULTI_SAMPLE = ("StudyInstanceUID,ETT - Abnormal,ETT - Normal,CVC - Normal\n"
                "1.2.1,0.5,0.5,0.5\n1.2.2,0.5,0.5,0.5\n")
MULTI_OK = ("StudyInstanceUID,ETT - Abnormal,ETT - Normal,CVC - Normal\n"
            "1.2.1,0.1,0.9,0.8\n1.2.2,0.02,0.3,0.05\n")  # rows sum to 1.8 and 0.37


def test_infer_kind_space_separated_sample_is_label_list(tmp_path):
    assert infer_kind(_write(tmp_path / "whale.csv", WHALE_SAMPLE)) == "label_list"
    assert infer_kind(_write(tmp_path / "whale.csv", WHALE_SAMPLE), WHALE_LABELS) == "label_list"
    one_cell = pd.DataFrame({"image_name": ["a", "b"], "tags": ["clear primary", "haze"]})
    assert infer_kind(one_cell) == "label_list"  # one cell with several labels is enough
    genres = pd.DataFrame({"id": [1, 2], "genre": ["Pop Rock", "Jazz"]})
    assert infer_kind(genres, ["Pop Rock", "Jazz"]) == "label"  # a legal label with a space in it
    # one label per sample cell cannot be told from the label kind: pass kind="label_list"
    assert infer_kind(_write(tmp_path / "plant.csv", PLANT_SAMPLE), PLANT_LABELS) == "label"
    # a probability per label cannot be told from class_proba: pass kind="multilabel_proba"
    assert infer_kind(_write(tmp_path / "multi.csv", MULTI_SAMPLE)) == "class_proba"


def test_infer_kind_counts_labels_only_in_cells_that_are_not_numbers(monkeypatch):
    """A cell that reads as a number holds one token: a 500k-row probability sample is not split
    cell by cell, and a few text cells among numbers are still seen."""
    seen = []
    real = verification._token_counts

    def spy(cells):
        seen.append(cells.tolist())
        return real(cells)

    monkeypatch.setattr(verification, "_token_counts", spy)
    probs = pd.DataFrame({"id": [f"i{k}" for k in range(1000)], "target": 0.3})
    assert infer_kind(probs) == "binary_proba" and seen == [[]]
    mixed = pd.DataFrame({"id": range(5), "tags": ["1", " 2 ", "haze clear", "3.5", "primary"]})
    assert infer_kind(mixed) == "label_list" and seen[-1] == ["haze clear", "primary"]


def test_all_int_is_decided_by_the_first_cell_or_by_every_cell():
    from kagglekit_nb._table import _all_int

    assert _all_int(pd.Series(["1", " -2 ", "+30"])) is True
    assert _all_int(pd.Series(["ISIC_0000001", "2"])) is False  # the first cell decides
    assert _all_int(pd.Series(["1", "2", "3.0"])) is False      # a later cell decides
    assert _all_int(pd.Series([], dtype=str)) is True


def test_label_list_valid_files_pass(tmp_path):
    report = verify(_write(tmp_path / "w.csv", WHALE_OK), _write(tmp_path / "ws.csv", WHALE_SAMPLE),
                    labels=WHALE_LABELS)
    assert report.valid and report.kind == "label_list", report.format()
    assert report.errors == [] and report.warnings == []
    assert "the sample lists 5 labels per row in column 'Id': more is an error, fewer a warning" \
        in report.notes
    report = verify(_write(tmp_path / "p.csv", PLANT_OK), _write(tmp_path / "ps.csv", PLANT_SAMPLE),
                    labels=PLANT_LABELS, kind="label_list")
    assert report.valid and report.errors == [] and report.warnings == [], report.format()
    assert not any("labels per row" in n for n in report.notes)  # one label per sample cell: no k
    unchecked = verify(tmp_path / "p.csv", tmp_path / "ps.csv", kind="label_list")
    assert unchecked.valid
    assert "legal labels unknown for column 'labels': pass labels=[...] to check them" \
        in unchecked.notes


LABEL_LIST_BROKEN = [
    ("token-not-legal", "plant", "image,labels\nx.jpg,scab blight\ny.jpg,healthy\nz.jpg,rust\n",
     "1 cells in column 'labels' hold labels that are not legal (e.g. 'blight' in ids x.jpg): use "
     "labels among ['healthy', 'scab', 'rust', 'frog_eye_leaf_spot', 'complex', 'powdery_mildew']"),
    ("empty-cell", "plant", "image,labels\nx.jpg,scab\ny.jpg,  \nz.jpg,rust\n",
     "1 missing values (NaN or empty cells) in column 'labels' (e.g. ids y.jpg)"),
    ("repeated-token", "plant", "image,labels\nx.jpg,scab rust scab\ny.jpg,healthy\nz.jpg,rust\n",
     "1 cells in column 'labels' list a label twice (e.g. id x.jpg: 'scab rust scab')"),
    ("too-many-tokens", "whale",
     "Image,Id\na.jpg,w_5 new_whale w_1 w_2 w_3 w_4\nb.jpg,new_whale w_4 w_3 w_2 w_1\n"
     "c.jpg,w_1 w_2 w_3 w_4 w_5\n",
     "1 cells in column 'Id' list more than 5 labels (e.g. id a.jpg lists 6: "
     "'w_5 new_whale w_1 w_2 w_3 w_4'): the sample lists 5 per row"),
    ("whale-token-not-legal", "whale",
     "Image,Id\na.jpg,w_5 new_whale w_1 w_2 w_9\nb.jpg,new_whale w_4 w_3 w_2 w_1\n"
     "c.jpg,w_1 w_2 w_3 w_4 w_5\n",
     "1 cells in column 'Id' hold labels that are not legal (e.g. 'w_9' in ids a.jpg)"),
]


@pytest.mark.parametrize("which, text, phrase", [c[1:] for c in LABEL_LIST_BROKEN],
                         ids=[c[0] for c in LABEL_LIST_BROKEN])
def test_label_list_broken_file_fails_naming_column_and_example(tmp_path, which, text, phrase):
    sample, labels = {"plant": (PLANT_SAMPLE, PLANT_LABELS),
                      "whale": (WHALE_SAMPLE, WHALE_LABELS)}[which]
    report = verify(_write(tmp_path / "s.csv", text), _write(tmp_path / "sample.csv", sample),
                    labels=labels, kind="label_list")
    assert report.valid is False
    assert len(report.errors) == 1 and phrase in report.errors[0], report.format()


def test_label_list_fewer_than_k_is_a_warning(tmp_path):
    text = ("Image,Id\na.jpg,new_whale w_1\nb.jpg,new_whale w_4 w_3 w_2 w_1\n"
            "c.jpg,w_1 w_2 w_3 w_4 w_5\n")
    report = verify(_write(tmp_path / "s.csv", text), _write(tmp_path / "ws.csv", WHALE_SAMPLE),
                    labels=WHALE_LABELS)
    assert report.valid and report.errors == []
    assert len(report.warnings) == 1
    assert report.warnings[0].startswith("1 cells in column 'Id' list fewer than 5 labels (e.g. id "
                                         "a.jpg lists 2: 'new_whale w_1')")


def test_label_kind_hints_at_label_list(tmp_path):
    report = verify(_write(tmp_path / "p.csv", PLANT_OK), _write(tmp_path / "ps.csv", PLANT_SAMPLE),
                    labels=PLANT_LABELS)
    assert report.kind == "label" and not report.valid
    assert report.errors[0].endswith("each lists several labels: pass kind='label_list' if the "
                                     "competition takes space-separated labels")


def test_multilabel_proba_rows_need_not_sum_to_1(tmp_path):
    sample = _write(tmp_path / "sample.csv", MULTI_SAMPLE)
    path = _write(tmp_path / "s.csv", MULTI_OK)
    report = verify(path, sample, kind="multilabel_proba")
    assert report.valid and report.errors == [] and report.warnings == [], report.format()
    as_class = verify(path, sample)  # inferred class_proba: the same rows get the row-sum warning
    assert as_class.kind == "class_proba" and as_class.valid
    assert len(as_class.warnings) == 1
    assert "2 rows' probabilities do not sum to 1" in as_class.warnings[0]


@pytest.mark.parametrize("text, phrase", [
    ("StudyInstanceUID,ETT - Abnormal,ETT - Normal,CVC - Normal\n1.2.1,0.1,1.2,0.8\n1.2.2,0,0,0\n",
     "1 probabilities above 1 in column 'ETT - Normal' (max 1.2, e.g. ids 1.2.1)"),
    ("StudyInstanceUID,ETT - Abnormal,ETT - Normal,CVC - Normal\n1.2.1,0.1,0.2,-0.5\n1.2.2,0,0,0\n",
     "1 probabilities below 0 in column 'CVC - Normal' (min -0.5, e.g. ids 1.2.1)"),
    ("StudyInstanceUID,ETT - Abnormal,ETT - Normal,CVC - Normal\n1.2.1,0.1,yes,0.8\n1.2.2,0,0,0\n",
     "1 non-numeric values in column 'ETT - Normal' (e.g. 'yes')"),
    ("StudyInstanceUID,ETT - Abnormal,ETT - Normal,CVC - Normal\n1.2.1,inf,0.2,0.8\n1.2.2,0,0,0\n",
     "1 infinite values in column 'ETT - Abnormal' (e.g. ids 1.2.1)"),
], ids=["above-1", "below-0", "text", "inf"])
def test_multilabel_proba_broken_file_fails(tmp_path, text, phrase):
    report = verify(_write(tmp_path / "s.csv", text), _write(tmp_path / "sample.csv", MULTI_SAMPLE),
                    kind="multilabel_proba")
    assert report.valid is False
    assert len(report.errors) == 1 and phrase in report.errors[0], report.format()
    assert report.warnings == []


# ------------------------------------------------------------------------------------------------
# A sample saved with its pandas index: the id column has no name (header ',label').

INDEX_SAMPLE = ",label\n0,cat\n1,cat\n2,cat\n"


@pytest.mark.parametrize("header", [",label", "Unnamed: 0,label"])
def test_unnamed_id_column_is_matched_by_position(tmp_path, header):
    sample = _write(tmp_path / "sample.csv", INDEX_SAMPLE)
    path = _write(tmp_path / "s.csv", f"{header}\n2,dog\n0,cat\n1,bird\n")
    for against in (sample, pd.read_csv(sample)):  # read by pandas, the header '' is 'Unnamed: 0'
        report = verify(path, against, labels=LABELS)
        assert report.valid, report.format()
        assert report.errors == [] and len(report.warnings) == 1
        assert "different order" in report.warnings[0]  # the ids were compared, row by row
    wrong = verify(_write(tmp_path / "w.csv", f"{header}\n0,dog\n1,cat\n7,bird\n"), sample,
                   labels=LABELS)
    assert not wrong.valid
    assert "1 ids missing from the submission (e.g. 2)" in wrong.errors[0]
    assert "1 ids not in the sample (e.g. 7)" in wrong.errors[1]


def test_unnamed_id_column_named_in_the_submission_is_a_warning(tmp_path):
    sample = _write(tmp_path / "sample.csv", INDEX_SAMPLE)
    report = verify(_write(tmp_path / "s.csv", "id,label\n0,dog\n1,cat\n2,bird\n"), sample,
                    labels=LABELS)
    assert report.valid and report.errors == []
    assert report.warnings == ["the sample's id column has no name ('', a saved pandas index) but "
                               "the submission's first column, taken as the id column by position, "
                               "is named 'id': write the sample's header unchanged (',label'), or "
                               "repair with cast_ids=True"]
    # a saved index in front of the id column is still caught
    indexed = verify(_write(tmp_path / "i.csv", "Unnamed: 0,,label\n0,0,dog\n1,1,cat\n2,2,bird\n"),
                     sample, labels=LABELS)
    assert not indexed.valid and "saved DataFrame index" in indexed.errors[0]
