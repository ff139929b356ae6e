"""Tests for kagglekit_nb.params: text to a parameter's value (one rule for `kagglekit run -p` and the
notebook form) and the Config's type check of typed values."""
from __future__ import annotations

import pytest

from kagglekit_nb.params import annotation_types, check_type, parse_value
from kagglekit_nb.runner import convert_parameters


@pytest.mark.parametrize("text, default, allowed, expected", [
    ("12", 3, (), 12), ("-1", 3, (), -1), ("0.5", 1.0, (), 0.5), ("2", 1.0, (), 2.0),
    ("yes", False, (), True), ("off", True, (), False), (" a b ", "x", (), "a b"),
    ("none", None, (int, type(None)), None), ("", None, (str, type(None)), None),
    ("90", None, (str, type(None)), "90"), ("0.25", 1, (float,), 0.25), ("3", None, (), 3),
    ("[1, 2]", None, (), "[1, 2]"), ("None", "x", (), "None"), ("[1, 2]", [3], (), [1, 2]),
    ("(4, 5)", (1, 2), (), (4, 5)),
    # `str | None` (WEIGHTS): the word None is None; a text-only `str` parameter keeps the word
    ("None", "auto", (str, type(None)), None), ("null", "auto", (str, type(None)), None),
    ("None", "auto", (str,), "None"),
])
def test_parse_types_values_like_the_default(text, default, allowed, expected):
    value = parse_value("P", text, default, allowed)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("text, default, allowed, message", [
    ("3.5", 3, (), "P: '3.5' is not valid; enter a whole number, e.g. 3."),
    ("inf", 0.1, (), "P: 'inf' is not valid; enter a finite number, e.g. 0.001."),
    ("maybe", True, (), "P: 'maybe' is not valid; enter true or false."),
    ("None", 3, (), "P: 'None' is not valid; enter a whole number, e.g. 3."),
    ("x", None, (int, type(None)), "P: 'x' is not valid; enter a whole number, e.g. 3 or None."),
    ("32", [32, 64], (), "P: '32' is not valid; enter a list like [32, 64]."),
    ("[32", [32, 64], (), "P: '[32' is not valid; enter a list like [32, 64]."),
])
def test_parse_rejects_values_of_the_wrong_type(text, default, allowed, message):
    with pytest.raises(ValueError) as info:
        parse_value("P", text, default, allowed)
    assert str(info.value) == message


def test_the_command_line_parses_like_the_form():
    defaults = {"EPOCHS": 3, "LR": 0.001, "FLIP": True, "LIMIT": None, "NAME": "x"}
    typed = {"EPOCHS": " 7", "LR": "1e-4", "FLIP": "off", "LIMIT": "5", "NAME": "resnet18 "}
    cli = convert_parameters(list(typed.items()), defaults)
    form = {name: parse_value(name, text, defaults[name]) for name, text in typed.items()}
    assert cli == form == {"EPOCHS": 7, "LR": 1e-4, "FLIP": False, "LIMIT": 5, "NAME": "resnet18"}
    with pytest.raises(ValueError, match=r"^-p EPOCHS: 'many' is not valid; enter a whole number"):
        convert_parameters([("EPOCHS", "many")], defaults)


def test_annotation_types():
    assert annotation_types(int | None) == (int, type(None))
    assert annotation_types(float) == (float,)


@pytest.mark.parametrize("value, allowed, expected", [
    (3, (float,), 3.0), (90, (str, type(None)), "90"), (2024, (str,), "2024"), (None, (int, type(None)), None),
    (True, (bool,), True), (5, (int, type(None)), 5), (0.5, (float, type(None)), 0.5),
])
def test_check_type_accepts_and_converts_where_meant(value, allowed, expected):
    checked = check_type("P", value, allowed)
    assert checked == expected and type(checked) is type(expected)


@pytest.mark.parametrize("value, allowed, message", [
    (True, (int,), "P=True has the wrong type: expected int."),
    ("3", (int, type(None)), "P='3' has the wrong type: expected int or None."),
    (None, (float,), "P=None has the wrong type: expected float."),
])
def test_check_type_rejects_the_wrong_type(value, allowed, message):
    with pytest.raises(ValueError) as info:
        check_type("P", value, allowed)
    assert str(info.value) == message
