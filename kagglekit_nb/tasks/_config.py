"""The base of every task's Config (the notebook's parameters, type-checked the same way everywhere)
and what every task shares: opening the run, finding the data, the bundled demo, a timm model by
name, verifying a CSV submission, the training plots."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..params import annotation_types, check_type

if TYPE_CHECKING:
    from ..run import Run

__all__ = ["Demo", "NotebookConfig", "RunConfig", "early_baseline", "find_data", "find_data_dir", "sized_test_rows",
           "start", "timm_model", "training_plots", "use_weights", "verify_csv", "weights_for"]

SUBMISSION_FILE = "submission.csv"


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


@dataclass
class RunConfig(NotebookConfig):
    """The parameters every notebook starts with (the common names), in the parameters cell's order; a
    task's Config sets its RUN_NAME and adds its own, ending with NUM_WORKERS and DEVICE (`start`
    reads RUN_NAME, RESUME_FROM, OUTPUT_DIR, BUDGET, SEED and DEVICE)."""

    DATA_DIR: str | None = None        # the data folder; None = find it under /kaggle/input, else the demo
    OUTPUT_DIR: str | None = None      # None = the platform's run dir (Drive on Colab, /kaggle/working on Kaggle)
    BUDGET: str | None = None          # "45m", "2h"; None = what the platform allows
    SEED: int = 42
    RUN_NAME: str = "run"
    RESUME_FROM: str | None = None     # "owner/notebook-slug": continue the run saved in its last output (Kaggle API)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.RESUME_FROM is not None:
            from ..kaggle_io import check_kernel  # no kaggle import: only the name's form is checked

            self.RESUME_FROM = check_kernel(self.RESUME_FROM, "RESUME_FROM")


def start(cfg: Any, **kwargs: Any) -> Run:
    """Open the run of a notebook's Config: seed, budget, output folder (filled from RESUME_FROM's output
    when it holds no run yet), device (see `start_run`). Every task ends by writing and verifying its
    submission: those reserves are declared here."""
    from ..run import start_run

    run = start_run(cfg.as_dict(), run_name=cfg.RUN_NAME, output_dir=cfg.OUTPUT_DIR, budget=cfg.BUDGET,
                    seed=cfg.SEED, device=cfg.DEVICE, resume_from=cfg.RESUME_FROM, **kwargs)
    run.budget.reserve_submission()
    return run


def sized_test_rows(run: Run | None, visible: int, expected: int | None, what: str = "test rows") -> int:
    """The test rows prediction is sized for (`budget.predict_rows`: TEST_ROWS when a code competition's
    rerun scores more than the `visible` rows); said once per run and recorded as `test_rows` in run.json."""
    from ..budget import predict_rows

    rows = predict_rows(visible, expected)
    if run is not None and rows > visible and run.record.get("test_rows") != rows:
        run.record["test_rows"] = rows
        run.log(f"prediction is sized for {rows} {what} (TEST_ROWS), not the {visible} the sample lists")
    return rows


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


@dataclass(frozen=True)
class Demo:
    """A bundled demo competition (`kagglekit_nb.demo.make_demo(kind, ...)`), made once in the working
    dir's `kagglekit_demo/<name>` and reused; `subdir` is the part of it a task reads."""

    kind: str                                   # the demo maker: classification, glacier, isic
    marks: tuple[str, ...]                      # paths inside the folder that exist once it is made
    note: str                                   # how the log names it
    name: str = ""                              # the folder's name (default: `kind`)
    subdir: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)  # passed to the demo maker

    def path(self, run: Run) -> Path:
        """The demo's folder (its `subdir`), written first if it is not complete."""
        from .. import env
        from ..demo import make_demo

        folder = env.working_dir(run.platform) / "kagglekit_demo" / (self.name or self.kind)
        if not all((folder / mark).exists() for mark in self.marks):
            make_demo(self.kind, folder, seed=0, **self.options)
        return folder / self.subdir if self.subdir else folder


def find_data(cfg: Any, run: Run, *, required: Sequence[str], what: str, demo: Demo | None = None,
              max_depth: int = 3) -> Path | None:
    """The folder a task reads: cfg.DATA_DIR, else found under the inputs, else the demo (see
    `find_data_dir`); None only without a demo."""
    return find_data_dir(cfg.DATA_DIR, run, required=required, what=what, max_depth=max_depth,
                         demo=None if demo is None else lambda: demo.path(run),
                         demo_note=demo.note if demo is not None else "")


def timm_model(name: str, **kwargs: Any) -> Any:
    """`timm.create_model(name, **kwargs)`; an unknown name is a ValueError listing similar ones, and a
    weights file (``pretrained_cfg_overlay=dict(file=...)``) that does not fit the model says so."""
    import timm

    file = (kwargs.get("pretrained_cfg_overlay") or {}).get("file")
    advice = f"Point WEIGHTS at weights of {name} itself, or set WEIGHTS = None."
    try:
        model = timm.create_model(name, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            close = timm.list_models(f"*{name.split('_')[0][:6]}*")[:8]
            raise ValueError(f"MODEL={name!r} is not a timm model; similar names: {close}.") from None
        if file is None:
            raise
        raise ValueError(f"the weights {file} do not fit the timm model {name!r} ({str(e)[:300]}). {advice}") from None
    if file is not None:
        from ..weights import missing_tensors

        missing, wanted = missing_tensors(model, file)
        if missing:
            raise ValueError(f"the weights {file} do not fit the timm model {name!r}: {len(missing)} of its {wanted} "
                             f"tensors are not in the file (e.g. {', '.join(missing[:3])}). {advice}")
    return model


def weights_for(run: Run | None, model_name: str, weights: Any, *, repo: Any) -> Any:
    """`weights.resolve_weights` for this run, said once: the log names the weights and their source,
    ``run.record["weights"]`` keeps source, path and sha256, and random weights nobody asked for warn
    once per run (in the log and as a Python warning; without a run, at every call)."""
    import warnings

    from ..weights import resolve_weights as resolve

    found = resolve(model_name, weights, repo=repo)
    if run is None:
        if found.warning is not None:
            warnings.warn(found.warning, stacklevel=3)
        return found
    if use_weights(run, found) and found.warning is not None:
        run.log(f"WARNING: {found.warning}")
        warnings.warn(found.warning, stacklevel=3)
    return found


def use_weights(run: Run, weights: Any) -> bool:
    """Record the weights a model starts from in run.json (``run.record["weights"]``) and log them;
    False (and nothing said) when the run already recorded these very weights."""
    record = weights.record()
    if run.record.get("weights") == record:
        return False
    run.record["weights"] = record
    run.log(f"weights: {weights.describe()}")
    return True


def early_baseline(run: Run, sample: Any, *, train_labels: Sequence[Any] | None, kind: str,
                   labels: Sequence[Any] | None = None) -> Path:
    """Write the emergency baseline (`submission.baseline`: the training prior) as the run's
    `submission.csv` as soon as the sample can be read, so a cell failing later still leaves a valid
    file. A valid submission already there (an earlier session's) is kept instead; later submissions
    replace either only after verification (`submission.write_verified`)."""
    from ..submission import baseline, verify, write_csv

    path = run.dir / SUBMISSION_FILE
    if path.is_file() and verify(path, sample, labels, kind=kind).valid:
        run.log(f"kept the valid {path.name} of an earlier session until this run verifies its own")
        return path
    try:
        base = baseline(sample, train_labels, kind=kind, labels=labels)
    except ValueError as e:  # unusable train labels must not cost the run its first valid file
        base = baseline(sample, None, kind=kind, labels=labels)
        base.attrs["note"] += f" (train labels not used: {e})"
    write_csv(base, path)
    run.record["submission"] = f"emergency baseline ({base.attrs['note']})"
    run.save()
    run.log(f"wrote the emergency baseline to {path} ({base.attrs['note']}); a verified model replaces it")
    return path


def record_written(run: Run, report: Any, what: str, path: Path) -> None:
    """Say in run.json which submission `path` holds after `submission.write_verified`: `what` when its
    report is valid, else that `what` was rejected (and why) and the file kept what it held."""
    if report.valid:
        run.record["submission"] = what
    else:
        run.record["submission_rejected"] = {"what": what, "errors": report.errors[:10]}
        run.log(f"WARNING: the {what} submission is invalid and was not used ({'; '.join(report.errors[:3])}); "
                f"{path} keeps {run.record.get('submission', 'what it held')}")


def verify_csv(run: Run, path: Path, sample_path: Path, **kwargs: Any) -> Any:
    """Verify a CSV submission against the sample (`submission.finalize`, timed as "verify"), write
    verification.json, and run.json whatever happens. An invalid file is replaced by the emergency
    baseline and the call fails with the reasons."""
    from ..submission import finalize

    try:
        with run.budget.timed("verify"):
            report = finalize(path, sample_path, run.dir, **kwargs)
    finally:
        run.save()
    run.log(f"submission {path} is valid; report in {run.dir / 'verification.json'}")
    return report


def training_plots(run: Run) -> dict[str, Path]:
    """Training curves (loss and score per fold and epoch) and time per phase against the budget, saved
    in `<run>/plots`; a plot without data yet is skipped with a log line."""
    from .. import plots
    from ..cv import HISTORY_FILE

    out: dict[str, Path] = {}
    if (run.dir / HISTORY_FILE).is_file():
        out["training_curves"] = plots.training_curves(run)
    else:
        run.log(f"no training curves: {HISTORY_FILE} does not exist yet (no epoch has finished)")
    if run.budget.phases:
        out["time_bar"] = plots.time_bar(run)
    return out
