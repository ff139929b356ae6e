"""An independent battery for `kagglekit verify`: every broken file is caught (exit 1), no valid
file raises a false alarm (exit 0). Files are written byte by byte, the way other tools write them."""
from __future__ import annotations

import json

import pytest

from kagglekit_nb.cli import main

LABEL_SAMPLE = "id,label\n101,cat\n102,cat\n103,cat\n104,cat\n"
PROBA_SAMPLE = "image_id,healthy,rust,scab\nimg_a,0.33,0.33,0.34\nimg_b,0.33,0.33,0.34\nimg_c,0.33,0.33,0.34\n"
BINARY_SAMPLE = "isic_id,target\nISIC_0000001,0.5\nISIC_0000002,0.5\nISIC_0000003,0.5\n"
PLANT_SAMPLE = "image,labels\n800113bb65efe69e.jpg,healthy\n8002cb321f8bfcdf.jpg,healthy\n"
RANZCR_SAMPLE = ("StudyInstanceUID,ETT - Abnormal,ETT - Normal,CVC - Normal\n"
                 "1.2.826.1,0.5,0.5,0.5\n1.2.826.2,0.5,0.5,0.5\n")
SAMPLES = {"label": LABEL_SAMPLE, "proba": PROBA_SAMPLE, "binary": BINARY_SAMPLE,
           "plant": PLANT_SAMPLE, "ranzcr": RANZCR_SAMPLE}
LABELS = {"label": "cat,dog,bird", "plant": "healthy,scab,rust,frog_eye_leaf_spot,complex,powdery_mildew"}

VALID = {
    "label-exact": ("label", "id,label\n101,dog\n102,cat\n103,bird\n104,dog\n"),
    "label-shuffled": ("label", "id,label\n104,dog\n102,cat\n101,bird\n103,dog\n"),
    "label-crlf": ("label", "id,label\r\n101,dog\r\n102,cat\r\n103,bird\r\n104,dog\r\n"),
    "label-quoted": ("label", '"id","label"\n"101","dog"\n"102","cat"\n"103","bird"\n"104","dog"\n'),
    "label-no-final-newline": ("label", "id,label\n101,dog\n102,cat\n103,bird\n104,dog"),
    "proba-exact": ("proba", "image_id,healthy,rust,scab\nimg_a,0.1,0.2,0.7\nimg_b,1,0,0\nimg_c,0.5,0.25,0.25\n"),
    "proba-reordered-columns": ("proba", "image_id,scab,healthy,rust\nimg_a,0.7,0.1,0.2\nimg_b,0,1,0\nimg_c,0.25,0.5,0.25\n"),
    "proba-columns-and-rows-shuffled": ("proba", "rust,image_id,scab,healthy\n0.2,img_c,0.3,0.5\n0.1,img_a,0.1,0.8\n0.0,img_b,0.0,1.0\n"),
    "proba-scientific": ("proba", "image_id,healthy,rust,scab\nimg_a,1e-3,2.5e-1,7.49e-1\nimg_b,1,0,0\nimg_c,0.5,0.25,0.25\n"),
    "binary-probabilities": ("binary", "isic_id,target\nISIC_0000001,0.01\nISIC_0000002,0.9\nISIC_0000003,0.333333\n"),
    "binary-hard-labels": ("binary", "isic_id,target\nISIC_0000001,0\nISIC_0000002,1\nISIC_0000003,0\n"),
    "binary-crlf-quoted": ("binary", '"isic_id","target"\r\n"ISIC_0000003","0.2"\r\n"ISIC_0000001","0.1"\r\n"ISIC_0000002","0.7"\r\n'),
}

BROKEN = {
    "label-empty-file": ("label", ""),
    "label-header-only": ("label", "id,label\n"),
    "label-missing-row": ("label", "id,label\n101,dog\n102,cat\n103,bird\n"),
    "label-extra-row": ("label", "id,label\n101,dog\n102,cat\n103,bird\n104,dog\n105,cat\n"),
    "label-duplicate-id": ("label", "id,label\n101,dog\n101,cat\n103,bird\n104,dog\n"),
    "label-wrong-id": ("label", "id,label\n101,dog\n102,cat\n103,bird\n999,dog\n"),
    "label-float-ids": ("label", "id,label\n101.0,dog\n102.0,cat\n103.0,bird\n104.0,dog\n"),
    "label-padded-ids": ("label", "id,label\n 101,dog\n102 ,cat\n103,bird\n104,dog\n"),
    "label-unknown-label": ("label", "id,label\n101,dog\n102,cat\n103,fish\n104,dog\n"),
    "label-empty-label": ("label", "id,label\n101,dog\n102,\n103,bird\n104,dog\n"),
    "label-index-column": ("label", ",id,label\n0,101,dog\n1,102,cat\n2,103,bird\n3,104,dog\n"),
    "label-wrong-header": ("label", "Id,Label\n101,dog\n102,cat\n103,bird\n104,dog\n"),
    "label-semicolons": ("label", "id;label\n101;dog\n102;cat\n103;bird\n104;dog\n"),
    "label-tabs": ("label", "id\tlabel\n101\tdog\n102\tcat\n103\tbird\n104\tdog\n"),
    "label-no-header": ("label", "101,dog\n102,cat\n103,bird\n104,dog\n"),
    "label-missing-column": ("label", "id\n101\n102\n103\n104\n"),
    "proba-nan": ("proba", "image_id,healthy,rust,scab\nimg_a,NaN,0.2,0.7\nimg_b,1,0,0\nimg_c,0.5,0.25,0.25\n"),
    "proba-inf": ("proba", "image_id,healthy,rust,scab\nimg_a,inf,0.2,0.7\nimg_b,1,0,0\nimg_c,0.5,0.25,0.25\n"),
    "proba-above-one": ("proba", "image_id,healthy,rust,scab\nimg_a,1.2,0.2,0.7\nimg_b,1,0,0\nimg_c,0.5,0.25,0.25\n"),
    "proba-negative": ("proba", "image_id,healthy,rust,scab\nimg_a,-0.1,0.4,0.7\nimg_b,1,0,0\nimg_c,0.5,0.25,0.25\n"),
    "proba-text-value": ("proba", "image_id,healthy,rust,scab\nimg_a,high,0.2,0.7\nimg_b,1,0,0\nimg_c,0.5,0.25,0.25\n"),
    "proba-missing-class": ("proba", "image_id,healthy,rust\nimg_a,0.3,0.7\nimg_b,1,0\nimg_c,0.5,0.5\n"),
    "proba-extra-class": ("proba", "image_id,healthy,rust,scab,other\nimg_a,0.1,0.2,0.6,0.1\nimg_b,1,0,0,0\nimg_c,0.5,0.25,0.25,0\n"),
    "proba-short-row": ("proba", "image_id,healthy,rust,scab\nimg_a,0.1,0.2\nimg_b,1,0,0\nimg_c,0.5,0.25,0.25\n"),
    "proba-labels-not-probs": ("proba", "image_id,healthy,rust,scab\nimg_a,healthy,,\nimg_b,rust,,\nimg_c,scab,,\n"),
    "binary-out-of-range": ("binary", "isic_id,target\nISIC_0000001,2\nISIC_0000002,1\nISIC_0000003,0\n"),
    "binary-empty-cell": ("binary", "isic_id,target\nISIC_0000001,\nISIC_0000002,1\nISIC_0000003,0\n"),
    "binary-ids-lowercase": ("binary", "isic_id,target\nisic_0000001,0.1\nisic_0000002,0.2\nisic_0000003,0.3\n"),
    "binary-percent": ("binary", "isic_id,target\nISIC_0000001,10%\nISIC_0000002,20%\nISIC_0000003,30%\n"),
    "binary-all-missing-ids": ("binary", "isic_id,target\nA,0.1\nB,0.2\nC,0.3\n"),
}


def _verify(tmp_path, capsys, kind: str, content: str, *extra: str) -> tuple[int, str]:
    sample = tmp_path / "sample_submission.csv"
    sample.write_text(SAMPLES[kind], newline="")
    sub = tmp_path / "submission.csv"
    sub.write_bytes(content.encode())
    args = ["verify", str(sub), "--sample", str(sample), *extra]
    if kind in LABELS:
        args += ["--labels", LABELS[kind]]
    code = main(args)
    return code, capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_submission_passes(name, tmp_path, capsys):
    code, out = _verify(tmp_path, capsys, *VALID[name])
    assert code == 0, out
    assert "VALID" in out and "INVALID" not in out


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_submission_is_caught(name, tmp_path, capsys):
    code, out = _verify(tmp_path, capsys, *BROKEN[name])
    assert code == 1, out
    assert "INVALID" in out


def test_battery_size():
    assert len(BROKEN) >= 25 and len(VALID) >= 8


def test_missing_submission_is_invalid(tmp_path, capsys):
    sample = tmp_path / "sample.csv"
    sample.write_text(LABEL_SAMPLE)
    assert main(["verify", str(tmp_path / "nope.csv"), "--sample", str(sample)]) == 1
    assert "INVALID" in capsys.readouterr().out


def test_missing_sample_is_a_usage_error(tmp_path, capsys):
    sub = tmp_path / "submission.csv"
    sub.write_text(LABEL_SAMPLE)
    assert main(["verify", str(sub), "--sample", str(tmp_path / "nope.csv")]) == 2
    assert "sample_submission.csv" in capsys.readouterr().err


def test_no_sample_argument_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["verify", str(tmp_path / "x.csv")])
    assert e.value.code == 2


def test_json_report(tmp_path, capsys):
    code, out = _verify(tmp_path, capsys, *BROKEN["label-missing-row"], "--json")
    report = json.loads(out)
    assert code == 1 and report["valid"] is False
    assert any("104" in e for e in report["errors"])  # the missing id is named


# ------------------------------------------------------------------------------------------------
# --kind: the formats the sample alone cannot tell.


def test_verify_kind_label_list(tmp_path, capsys):
    ok = "image,labels\n800113bb65efe69e.jpg,scab frog_eye_leaf_spot\n8002cb321f8bfcdf.jpg,healthy\n"
    code, out = _verify(tmp_path, capsys, "plant", ok, "--kind", "label_list")
    assert code == 0, out
    assert "VALID (label_list format, 0 error(s), 0 warning(s))" in out
    code, out = _verify(tmp_path, capsys, "plant", ok)  # inferred from one label per cell: label
    assert code == 1 and "pass kind='label_list'" in out
    bad = "image,labels\n800113bb65efe69e.jpg,scab blight\n8002cb321f8bfcdf.jpg,healthy\n"
    code, out = _verify(tmp_path, capsys, "plant", bad, "--kind", "label_list", "--json")
    report = json.loads(out)
    assert code == 1 and report["kind"] == "label_list"
    assert report["errors"][0].startswith("1 cells in column 'labels' hold labels that are not "
                                          "legal (e.g. 'blight' in ids 800113bb65efe69e.jpg)")


def test_verify_kind_multilabel_proba(tmp_path, capsys):
    ok = "StudyInstanceUID,ETT - Abnormal,ETT - Normal,CVC - Normal\n1.2.826.1,0.9,0.8,0.7\n1.2.826.2,0,0,0.1\n"
    code, out = _verify(tmp_path, capsys, "ranzcr", ok, "--kind", "multilabel_proba")
    assert code == 0 and "0 warning(s)" in out, out
    code, out = _verify(tmp_path, capsys, "ranzcr", ok)  # inferred class_proba: row sums warned
    assert code == 0 and "do not sum to 1" in out
    bad = ok.replace("0.8", "1.2")
    code, out = _verify(tmp_path, capsys, "ranzcr", bad, "--kind", "multilabel_proba")
    assert code == 1 and "probabilities above 1 in column 'ETT - Normal'" in out


def test_verify_unknown_kind_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _verify(tmp_path, capsys, "plant", PLANT_SAMPLE, "--kind", "tags")
    assert e.value.code == 2
    assert "label_list" in capsys.readouterr().err  # the choices are listed


def test_verify_kind_choices_are_the_csv_kinds():
    from kagglekit_nb import cli
    from kagglekit_nb.verification import KINDS

    assert cli._VERIFY_KINDS == KINDS
