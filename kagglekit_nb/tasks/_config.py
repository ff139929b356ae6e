"""The base of every task's Config (the notebook's parameters, type-checked the same way everywhere)
and the first steps every task shares: opening the run and finding the data."""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..params import annotation_types, check_type

if TYPE_CHECKING:
    from ..run import Run

__all__ = ["NotebookConfig", "find_data_dir", "start"]


class NotebookConfig:
    """Mixin for a `@dataclass` of notebook parameters (same names and defaults as the parameters cell).

    `from_namespace(globals())` picks the fields out of a notebook's namespace; construction checks
    every value against its annotation (an int is accepted for a float, a number for a text field such
    as `-p BUDGET 90`) and subclasses add their own range checks in `check()`.
    """

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, Any]):
        """Build from a mapping such as the notebook's `globals()`; types are checked."""
        values = {f.name: namespace[f.name] for f in dataclasses.fields(cls) if f.name in namespace}
        return cls(**values)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            checked = check_type(f.name, value, annotation_types(hints[f.name]))
            if checked is not value:
                setattr(self, f.name, checked)
        self.check()

    def check(self) -> None:
        """Range checks of a task's parameters (raise ValueError saying what to use instead)."""

    def at_least(self, low: float, *names: str) -> None:
        """Each named parameter (when not None) is at least `low`."""
        for name in names:
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"{name}={value!r} must be at least {low}.")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def start(cfg: Any, **kwargs: Any) -> Run:
    """Open the run of a notebook's Config: seed, budget, output folder, device (see `start_run`)."""
    from ..run import start_run

    return start_run(cfg.as_dict(), run_name=cfg.RUN_NAME, output_dir=cfg.OUTPUT_DIR, budget=cfg.BUDGET,
                     seed=cfg.SEED, device=cfg.DEVICE, **kwargs)


def find_data_dir(data_dir: str | None, run: Run, *, required: Sequence[str], what: str,
                  demo: Callable[[], Path] | None = None, demo_note: str = "", max_depth: int = 3) -> Path | None:
    """DATA_DIR when given (it must be a folder); else the one folder under the inputs (/kaggle/input,
    ./input) holding every `required` name or pattern; else `demo()` (said in the log), or None."""
    from .. import env

    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"DATA_DIR={data_dir!r} is not a folder: point it at the {what}.")
        return path
    found = env.find_competition_dir(required, max_depth=max_depth)
    if found is not None:
        run.log(f"{what} found in {found}")
        return found
    if demo is None:
        return None
    path = demo()
    run.log(f"no {what} attached: using {demo_note or 'the demo'} in {path}")
    return path
