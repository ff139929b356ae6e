"""What a person watching the notebook sees: a parameter form and progress.

Both look at `env.has_live_frontend()`. With someone at a notebook (Kaggle editor, Colab, Jupyter)
`form` shows an ipywidgets form and `progress` a tqdm bar; headless (papermill, nbval, CI,
`kagglekit run`, a saved Kaggle version) `form` does nothing and `progress` writes a plain line at
most every `every_s` seconds, so executed notebooks and terminal logs hold neither widget state nor
carriage-return redraws. ipywidgets and tqdm are imported only on the live path.

    kk.ui.form(globals(), config=task.Config)               # right after the parameters cell
    with kk.ui.progress(len(loader), "predict", budget=run.budget, echo=run.log) as bar:
        for batch in bar.wrap(loader): ...
"""
from __future__ import annotations

import dataclasses
import html
import math
import time
import typing
from collections.abc import (
    Callable,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any

from .env import has_live_frontend
from .params import annotation_types, parse_value

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Progress", "form", "format_duration", "progress"]

_SCALARS = (bool, int, float, str, type(None))


# --------------------------------------------------------------------------- parameter form


def _parameter_names(namespace: Mapping[str, Any]) -> list[str]:
    """The notebook's parameters: upper-case names holding None, bool, int, float or str."""
    return [k for k, v in namespace.items()
            if isinstance(k, str) and k.isupper() and not k.startswith("_") and type(v) in _SCALARS]


def _field_types(config: type | None) -> dict[str, tuple[type, ...]]:
    """The types a config dataclass allows per field (e.g. TRAIN_FOLDS: (int, NoneType))."""
    if config is None:
        return {}
    if not dataclasses.is_dataclass(config) or not hasattr(config, "from_namespace"):
        raise ValueError(f"config={config!r} must be a notebook Config class (a dataclass with from_namespace), "
                         "e.g. kagglekit_nb.tasks.classification.Config, or None.")
    hints = typing.get_type_hints(config)
    return {f.name: annotation_types(hints[f.name]) for f in dataclasses.fields(config)}


def _check_choices(choices: Mapping[str, Iterable[Any]] | None, names: Sequence[str]) -> dict[str, list[Any]]:
    if choices is None:
        return {}
    if not isinstance(choices, Mapping):
        raise TypeError(f"choices={choices!r} must map parameter names to their valid values, "
                         "e.g. {'TTA': ['none', 'hflip']}.")
    out = {}
    for name, values in choices.items():
        if name not in names:
            raise ValueError(f"choices names {name!r}, which is not a parameter of this form; "
                             f"the parameters are {', '.join(names)}.")
        options = list(values)
        if not options:
            raise ValueError(f"choices[{name!r}] is empty: give at least one valid value.")
        out[name] = options
    return out


class _Form:
    """The widgets of `form` and what the Apply button does."""

    def __init__(self, namespace: MutableMapping[str, Any], names: Sequence[str],
                 choices: dict[str, list[Any]], types_: dict[str, tuple[type, ...]], config: type | None):
        import ipywidgets as w

        self.namespace, self.names, self.types, self.config = namespace, list(names), types_, config
        self.defaults = {n: namespace[n] for n in self.names}  # types are read from these, not later values
        style, layout = {"description_width": "180px"}, w.Layout(width="520px")
        self.fields: dict[str, Any] = {}
        self.typed: set[str] = set()  # text fields, parsed on Apply
        for name in self.names:
            value = namespace[name]
            if name in choices:
                options = choices[name] + ([value] if value not in choices[name] else [])
                field = w.Dropdown(options=[(str(o), o) for o in options], value=value, description=name,
                                   style=style, layout=layout)
            elif isinstance(value, bool):
                field = w.Checkbox(value=value, description=name, indent=False)
            else:
                placeholder = "None" if value is None else ""
                field = w.Text(value="" if value is None else str(value), placeholder=placeholder,
                               description=name, continuous_update=False, style=style, layout=layout)
                field.observe(lambda change, n=name: self._mark(n), names="value")
                self.typed.add(name)
            self.fields[name] = field
        self.button = w.Button(description="Apply", button_style="primary",
                               tooltip="write these values into the notebook's parameters")
        self.button.on_click(lambda _: self.apply())
        self.status = w.HTML(value=_note("Change values, then Apply and run the cells from <i>Setup</i> on. "
                                         "<i>Run all</i> uses the values of the parameters cell."))
        self.box = w.VBox([*self.fields.values(), w.HBox([self.button]), self.status])

    def _value(self, name: str) -> Any:
        field = self.fields[name]
        if name not in self.typed:
            return field.value
        return parse_value(name, field.value, self.defaults[name], self.types.get(name, ()))

    def _mark(self, name: str) -> None:
        try:
            self._value(name)
        except ValueError as e:
            self.fields[name].layout.border = "2px solid #c62828"
            self.status.value = _note(html.escape(str(e)), error=True)
        else:
            self.fields[name].layout.border = ""

    def apply(self) -> dict[str, Any]:
        """Parse every field; write them into the namespace only if all are valid (and the config
        accepts them). Returns the values that changed."""
        values, errors = {}, []
        for name in self.names:
            try:
                values[name] = self._value(name)
            except ValueError as e:
                errors.append(str(e))
        if not errors and self.config is not None:
            try:
                self.config.from_namespace({**self.namespace, **values})
            except ValueError as e:
                errors.append(str(e))
        if errors:
            self.status.value = _note("Not applied: " + "<br>".join(html.escape(e) for e in errors), error=True)
            return {}
        changed = {n: v for n, v in values.items()
                   if not (type(v) is type(self.namespace[n]) and v == self.namespace[n])}
        self.namespace.update(values)
        if changed:
            listed = ", ".join(f"{n} = {v!r}" for n, v in changed.items())
            self.status.value = _note(f"Applied: {html.escape(listed)}. Now run the cells from <i>Setup</i> on.")
        else:
            self.status.value = _note("Applied: no value changed.")
        return changed


def _note(text: str, error: bool = False) -> str:
    colour = "#c62828" if error else "#555"
    return f'<span style="color:{colour}">{text}</span>'


def form(
    namespace: MutableMapping[str, Any],
    names: Sequence[str] | None = None,
    *,
    config: type | None = None,
    choices: Mapping[str, Iterable[Any]] | None = None,
    environ: Mapping[str, str] | None = None,
    display: Callable[[Any], Any] | None = None,
) -> None:
    """Show a form to edit the notebook's parameters, when someone is at the notebook.

    `namespace` is the notebook's `globals()`; `names` the parameters to show (default: every
    upper-case name holding None, bool, int, float or str, in the order of the parameters cell).
    A bool gets a checkbox, a name in `choices` a drop-down, the rest a text field whose value is
    typed like the default (None allowed where the default is None, or where `config`, the task's
    Config class, allows it; `config` also checks the values on Apply). Apply writes the values
    back into `namespace`.

    Headless (papermill, nbval, CI, `kagglekit run`) it returns at once: no output, nothing waits,
    ipywidgets is not imported.

        kk.ui.form(globals(), config=task.Config, choices={"TTA": task.TTA_CHOICES})
    """
    if not isinstance(namespace, MutableMapping):
        raise TypeError(f"namespace must be the notebook's globals() (a dict), not {type(namespace).__name__}.")
    if names is None:
        names = _parameter_names(namespace)
        if not names:
            raise ValueError("found no parameters in namespace (upper-case names holding None, bool, int, float "
                             "or str): call kk.ui.form(globals()) after the parameters cell.")
    else:
        if isinstance(names, str):
            raise ValueError(f"names={names!r} must be a list of parameter names, e.g. [{names!r}].")
        names = list(names)
        unknown = [n for n in names if n not in namespace]
        if unknown:
            raise ValueError(f"names {unknown} are not defined in namespace; the parameters found there are "
                             f"{', '.join(_parameter_names(namespace)) or 'none'}.")
        bad = [f"{n} ({type(namespace[n]).__name__})" for n in names if type(namespace[n]) not in _SCALARS]
        if bad:
            raise ValueError(f"the form edits None, bool, int, float and str values only; not {', '.join(bad)}.")
    types_ = _field_types(config)
    options = _check_choices(choices, names)
    if not has_live_frontend(environ):
        return
    built = _Form(namespace, names, options, types_, config)
    if display is None:
        from IPython.display import display
    display(built.box)


# --------------------------------------------------------------------------- progress


def format_duration(seconds: float) -> str:
    """A short duration for people: '45s', '3m10s', '2h05m'; 'unlimited' for infinity.

    >>> format_duration(190)
    '3m10s'
    """
    if not math.isfinite(seconds):
        return "unlimited"
    sign, s = ("-" if seconds < 0 else ""), round(abs(seconds))
    if s < 60:
        return f"{sign}{s}s"
    if s < 3600:
        return f"{sign}{s // 60}m{s % 60:02d}s"
    return f"{sign}{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Progress of a loop: a tqdm bar with someone at the notebook, else a plain line at most every
    `every_s` seconds (the first after `every_s`: short loops print nothing) with the rate, the time
    this loop still needs and, given a budget, the time the budget has left.

    Use it as a context manager (`close` at the end), calling `update(n)` or iterating `wrap(items)`.
    `info`, when given, is called only when a line is written (e.g. to read a running loss).
    """

    def __init__(self, total: int | None, desc: str = "", *, budget: Any = None, every_s: float = 30.0,
                 live: bool | None = None, echo: Callable[[str], Any] = print, unit: str = "step",
                 info: Callable[[], str] | None = None, clock: Callable[[], float] = time.monotonic,
                 environ: Mapping[str, str] | None = None, leave: bool = False):
        if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
            raise ValueError(f"total={total!r} must be a whole number >= 0, or None when unknown.")
        if isinstance(every_s, bool) or not isinstance(every_s, (int, float)) or not every_s > 0 \
                or not math.isfinite(every_s):
            raise ValueError(f"every_s={every_s!r} must be a positive number of seconds, e.g. 30.")
        if budget is not None and not callable(getattr(budget, "remaining", None)):
            raise ValueError(f"budget={budget!r} must be a kagglekit_nb Budget (e.g. run.budget) or None.")
        self._total, self.desc, self.budget, self.every_s = total, desc, budget, float(every_s)
        self.echo, self.unit, self.info, self.clock = echo, unit, info, clock
        self.n = 0
        self.start = self._last = clock()
        self.lines = 0
        self.live = has_live_frontend(environ) if live is None else bool(live)
        self.bar = None
        if self.live:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc or None, unit=unit, leave=leave, dynamic_ncols=True)

    @property
    def total(self) -> int | None:
        return self._total

    @total.setter
    def total(self, value: int | None) -> None:
        self._total = value
        if self.bar is not None:
            self.bar.total = value
            self.bar.refresh()

    def update(self, n: int = 1) -> None:
        """Count `n` more items done; writes a line (headless) when `every_s` has passed since the last."""
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            if self.info is not None:
                now = self.clock()
                if now - self._last >= 1.0:
                    self._last = now
                    self.bar.set_postfix_str(self.info(), refresh=False)
            return
        now = self.clock()
        if now - self._last >= self.every_s and self.n != self._total:  # the end is the caller's to report
            self._last = now
            self.lines += 1
            self.echo(self.line(now))

    def line(self, now: float | None = None) -> str:
        """The headless progress line, e.g. 'fold 2 epoch 3/12: step 120/400 (30%), 0.35 s/step,
        ~1m38s to go, budget left 3m10s'."""
        now = self.clock() if now is None else now
        spent = max(now - self.start, 1e-9)
        head = f"{self.desc}: " if self.desc else ""
        parts = [f"{self.unit} {self.n}/{self.total} ({self.n / self.total:.0%})" if self.total
                 else f"{self.unit} {self.n}"]
        if self.n:
            per = spent / self.n
            parts.append(f"{per:.3g} s/{self.unit}" if per >= 0.1 else f"{1 / per:.3g} {self.unit}/s")
            if self.total:
                parts.append(f"~{format_duration(per * max(self.total - self.n, 0))} to go")
        if self.budget is not None:
            parts.append(f"budget left {format_duration(self.budget.remaining())}")
        if self.info is not None:
            parts.append(self.info())
        return head + ", ".join(parts)

    def wrap(self, items: Iterable[Any]) -> Iterator[Any]:
        """Yield from `items`, counting one per item."""
        for item in items:
            yield item
            self.update()

    def __iter__(self) -> Iterator[Any]:
        raise TypeError("iterate progress.wrap(items), or build it with progress(items, ...).")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Iterating(Progress):
    """`progress(items)`: iterating it yields the items and counts them."""

    def __init__(self, items: Iterable[Any], *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._items = items

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self.wrap(self._items)
        finally:
            self.close()


def progress(
    items: int | Iterable[Any] | None = None,
    desc: str = "",
    budget: Any = None,
    every_s: float = 30.0,
    *,
    total: int | None = None,
    unit: str = "step",
    echo: Callable[[str], Any] = print,
    live: bool | None = None,
    info: Callable[[], str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    environ: Mapping[str, str] | None = None,
) -> Progress:
    """Progress of a loop: a tqdm bar in a live notebook, plain periodic lines headless (see `Progress`).

    `items` is the number of steps (then call `update()` or iterate `wrap(...)` inside a `with`
    block), or an iterable to loop over directly; `budget` (e.g. `run.budget`) adds what is left of
    it to every line; `echo` writes a line (e.g. `run.log`).

        for batch in kk.ui.progress(loader, "predict", budget=run.budget, echo=run.log):
            ...
    """
    if items is None or isinstance(items, int):
        return Progress(items if total is None else total, desc, budget=budget, every_s=every_s, live=live,
                        echo=echo, unit=unit, info=info, clock=clock, environ=environ)
    if not isinstance(items, Iterable) or isinstance(items, (str, bytes)):
        raise TypeError(f"items={items!r} must be a number of steps or an iterable (a list, a DataLoader).")
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    return _Iterating(items, total, desc, budget=budget, every_s=every_s, live=live, echo=echo, unit=unit,
                      info=info, clock=clock, environ=environ)
