"""Notebook parameters: one rule for turning typed text into a parameter's value, and one for checking a value.

`parse_value` serves both places a person types a parameter as text: `kagglekit run -p NAME VALUE`
(`runner`) and the notebook form (`ui.form`). The value takes the type of the parameter's default, or
any type the task's Config annotation allows; a bad value raises one message format, naming the
parameter, repeating the text and saying what to enter. The text None (or null, none, empty) is None
exactly where None is allowed: a None default, or an annotation such as `WEIGHTS: str | None` (so
`-p WEIGHTS None` asks for random weights); a text-only parameter (`RUN_NAME: str`) keeps the word. `check_type` is the Config's check of values
that are already typed (`tasks._config.NotebookConfig`).

    parse_value("EPOCHS", "12", 3)                        # 12
    parse_value("TRAIN_FOLDS", "none", None, (int, type(None)))  # None
    parse_value("-p LR", "fast", 0.001)                   # ValueError: -p LR: 'fast' is not valid; enter a finite number, e.g. 0.001.
"""
from __future__ import annotations

import ast
import math
import types
import typing
from collections.abc import Sequence
from typing import Any

__all__ = ["NONE_WORDS", "annotation_types", "check_type", "parse_value"]

NONE_WORDS = ("", "None", "none", "null")  # text that means None where None is allowed
_TRUE_WORDS = ("true", "1", "yes", "on")
_FALSE_WORDS = ("false", "0", "no", "off")
_SCALAR_KINDS = (bool, int, float, str)


def annotation_types(hint: Any) -> tuple[type, ...]:
    """The types an annotation allows: `int | None` -> (int, NoneType), `float` -> (float,)."""
    return typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)


def _as(kind: type, text: str) -> Any:
    """`text` as a `kind` (bool, int, float or str); ValueError saying what to enter when it is not one."""
    if kind is bool:
        low = text.lower()
        if low in _TRUE_WORDS:
            return True
        if low in _FALSE_WORDS:
            return False
        raise ValueError("true or false")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("a whole number, e.g. 3") from None
    if kind is float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ValueError("a finite number, e.g. 0.001")
        return value
    return text


def _literal(text: str, default: Any) -> Any:
    """`text` as a Python literal of the default's type (a list, tuple or dict parameter)."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = None
    if not isinstance(value, type(default)):
        raise ValueError(f"a {type(default).__name__} like {default!r}")
    return value


def parse_value(name: str, text: str, default: Any, allowed_types: Sequence[type] = ()) -> Any:
    """The value of parameter `name` typed as `text`: typed like `default`, or as `allowed_types` allow.

    None only where the default is None or the types allow it (then "", "None", "none" and "null" mean
    None). With a None default and no types, a number stays a number and anything else is text.
    Raises ValueError "NAME: 'TEXT' is not valid; enter ..." listing what would be valid.
    """
    text = text.strip()
    allowed = tuple(allowed_types)
    none_ok = default is None or type(None) in allowed
    if none_ok and text in NONE_WORDS:
        return None
    wanted: list[str] = []
    if default is not None and type(default) not in _SCALAR_KINDS:  # a list/tuple/dict parameter
        try:
            return _literal(text, default)
        except ValueError as e:
            wanted.append(str(e))
    else:
        kinds = [t for t in allowed if t in _SCALAR_KINDS]
        if default is not None:
            kinds = [type(default)] + [k for k in kinds if k is not type(default)]
        if not kinds:  # default None and no annotation: a number stays a number, anything else is text
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                return text
            return value if type(value) in (bool, int, float) else text
        for kind in kinds:
            try:
                return _as(kind, text)
            except ValueError as e:
                wanted.append(str(e))
    if none_ok:
        wanted.append("None")
    raise ValueError(f"{name}: {text!r} is not valid; enter {' or '.join(wanted)}.")


def check_type(name: str, value: Any, allowed: Sequence[type]) -> Any:
    """`value` when its type is one of `allowed`, else ValueError; returns it converted where meant.

    An int is accepted for a float (and becomes one); a number for a text-only field becomes its text
    (`-p BUDGET 90`, `-p DATA_DIR 2024`); a bool is never an int.
    """
    allowed = tuple(allowed)
    if isinstance(value, int) and not isinstance(value, bool) and float in allowed:
        value = float(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and str in allowed \
            and type(value) not in allowed:
        value = str(value)
    ok = any(value is None if a is type(None) else
             isinstance(value, a) and not (a is int and isinstance(value, bool)) for a in allowed)
    if not ok:
        names = " or ".join("None" if a is type(None) else a.__name__ for a in allowed)
        raise ValueError(f"{name}={value!r} has the wrong type: expected {names}.")
    return value
