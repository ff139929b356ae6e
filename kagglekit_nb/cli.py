"""Command line: `python -m kagglekit_nb …` or `kagglekit …`.

    demo {classification} --out DIR [--seed N]     write a demo competition in the real layout
    run NOTEBOOK [--data DIR] --out DIR [--budget 10m] [-p NAME VALUE]...
    batch NOTEBOOK --out DIR --grid FILE [--data DIR] [--budget T] [--parallel N] [-p NAME VALUE]...
    blend RUN_DIR... --out DIR [--metric M] [--sample SAMPLE]
    list                                           the template notebooks and the layouts they expect
    new NOTEBOOK [PATH] [--py] [--force]           a clean copy of a template notebook to fork and edit
    verify SUBMISSION --sample SAMPLE [--labels a,b] [--kind KIND] [--json]
    inspect DATA_DIR [-p NAME VALUE]... [--json]   how the classification notebook reads a competition folder
    env [--json]
    push NOTEBOOK --competition SLUG [--dataset OWNER/NAME]... [--kernel OWNER/SLUG]...
         [--gpu t4x2|p100|none] [--internet on|off] [--public] [--title T] [--out DIR] [--dry-run]
    download SLUG [--out DIR] [--force]
    submit FILE --competition SLUG -m MESSAGE [--sample SAMPLE]
    restore OWNER/SLUG[/VERSION] --out DIR [--run-name NAME]   the run saved in a notebook's output
    bundle --out DIR [--only-missing|--all] [--packages SPEC...] [--dataset OWNER/NAME]
    weights MODEL... --out DIR [--dataset OWNER/NAME]   pretrained weights as a Kaggle dataset

Exit codes: 0 success, 1 failure (a failed notebook, an invalid submission, a refused Kaggle call,
missing Kaggle credentials), 2 usage error.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]

# `verify --kind` choices: verification.KINDS written out, so that `verify --help` needs no pandas
# (tests/test_verify_cli.py keeps the two equal).
_VERIFY_KINDS = ("label", "class_proba", "binary_proba", "numeric", "multilabel_proba", "label_list")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 with usage: keep that, add a hint
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n(see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from .demo import DEMO_KINDS

    p = _Parser(prog="kagglekit", description="Kaggle/Colab notebook template kit.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser("demo", help="write a demo competition in the real on-disk layout")
    d.add_argument("kind", choices=DEMO_KINDS)
    d.add_argument("--out", required=True, help="folder to write the competition into")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--image-size", type=int, default=28, help="classification: image side in pixels")
    d.add_argument("--id-style", choices=("str", "int"), default="str", help="classification: id type")
    d.add_argument("--label-style", choices=("str", "int"), default="str", help="classification: label type")
    d.add_argument("--color", choices=("gray", "rgb"), default="gray", help="classification: image mode")
    d.add_argument("--tile-size", type=int, help="glacier: tile side in pixels (default: the real 512)")
    d.add_argument("--images", type=int, help="isic: number of training images")

    r = sub.add_parser("run", help="execute a notebook with papermill")
    r.add_argument("notebook", help="classification, glacier_pretrain, glacier_finetune, isic, or a path")
    r.add_argument("--data", help="competition folder (default: the notebook finds it, else the demo)")
    r.add_argument("--out", required=True, help="output folder (re-use it to resume)")
    r.add_argument("--budget", help="time budget for the whole run, e.g. 90s, 10m, 2h")
    r.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="set a notebook parameter (repeatable)")
    r.add_argument("--quiet", action="store_true", help="do not stream the notebook's output")

    t = sub.add_parser("batch", help="run every combination of a parameter grid, each in its own run folder")
    t.add_argument("notebook", help="classification, glacier_pretrain, glacier_finetune, isic, or a path")
    t.add_argument("--out", required=True, help="folder for the runs (one folder each) and leaderboard.csv; "
                                                "re-use it to skip finished runs and resume the others")
    t.add_argument("--grid", required=True, help="YAML or JSON file: parameter name -> list of values, "
                                                 "e.g. 'SEED: [0, 1, 2]'")
    t.add_argument("--data", help="competition folder (default: the notebook finds it, else the demo)")
    t.add_argument("--budget", help="time budget for the whole batch, e.g. 2h; each run gets its share of what is left")
    t.add_argument("--parallel", type=int, default=1, help="runs at a time (one GPU each when there are several)")
    t.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="set a notebook parameter for every run (repeatable)")

    l = sub.add_parser("blend", help="blend finished runs with weights that optimise the out-of-fold score "
                                     "(glacier runs: their fold models in one package, scored on the held-out tiles)")
    l.add_argument("runs", nargs="+", metavar="RUN_DIR", help="output folders of finished runs on the same data")
    l.add_argument("--out", required=True, help="folder for the blended submission.csv (glacier: package/) and "
                                                "blend.json")
    l.add_argument("--metric", help="metric to optimise (default: the runs' METRIC)")
    l.add_argument("--sample", help="sample_submission.csv to verify against (default: the one the runs used)")

    sub.add_parser("list", help="the template notebooks, one line each: what competition layout each expects")

    n = sub.add_parser("new", help="write a clean copy of a template notebook to fork and edit")
    n.add_argument("notebook", help="classification, glacier_pretrain, glacier_finetune or isic")
    n.add_argument("path", nargs="?", help="file or folder to write it to (default: the working dir)")
    n.add_argument("--py", action="store_true", help="also write its py:percent twin (.py) beside it")
    n.add_argument("--force", action="store_true", help="overwrite an existing file")

    v = sub.add_parser("verify", help="check a submission file against the sample submission")
    v.add_argument("submission")
    v.add_argument("--sample", required=True, help="the competition's sample_submission.csv")
    v.add_argument("--labels", help="comma-separated legal labels, e.g. cat,dog")
    v.add_argument("--kind", choices=_VERIFY_KINDS,
                   help="the submission format (default: inferred from the sample; "
                        "multilabel_proba is never inferred)")
    v.add_argument("--json", action="store_true", help="print the report as JSON")

    i = sub.add_parser("inspect", help="how the classification notebook reads a competition folder (no training)")
    i.add_argument("data", help="the competition folder (DATA_DIR)")
    i.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="an override the notebook takes: LABELS_FILE, LABEL_COLUMN, IMAGE_DIR, TEST_IMAGE_DIR, "
                        "SAMPLE_FILE, TARGET, METRIC")
    i.add_argument("--scratch", help="where archives are extracted (default: the platform's scratch folder)")
    i.add_argument("--json", action="store_true", help="print the decisions as JSON")

    e = sub.add_parser("env", help="platform, paths, hardware and library versions")
    e.add_argument("--json", action="store_true")

    from .kaggle_io import ACCELERATORS

    k = sub.add_parser("push", help="push a notebook to Kaggle as a new kernel version")
    k.add_argument("notebook", help="classification, glacier_pretrain, glacier_finetune, isic, or an .ipynb path")
    k.add_argument("--competition", required=True, help="the competition's name in its URL, e.g. digit-recognizer")
    k.add_argument("--dataset", action="append", default=[], metavar="OWNER/NAME",
                   help="attach a dataset, e.g. your kagglekit bundle (repeatable)")
    k.add_argument("--kernel", action="append", default=[], metavar="OWNER/SLUG",
                   help="attach another kernel's output, e.g. an earlier run to continue (repeatable)")
    k.add_argument("--gpu", choices=tuple(ACCELERATORS), default="t4x2", help="accelerator (default: t4x2)")
    k.add_argument("--internet", choices=("on", "off"), default="on",
                   help="internet in the session (code competitions need off; default: on)")
    k.add_argument("--public", action="store_true", help="make the kernel public (default: private)")
    k.add_argument("--title", help="kernel title, at least 5 characters (default: '<competition> <notebook>')")
    k.add_argument("--out", help="staging folder for the notebook and kernel-metadata.json "
                                 "(default: build/kaggle_push/<slug>)")
    k.add_argument("--dry-run", action="store_true", help="write the staging folder, push nothing")

    w = sub.add_parser("download", help="download and unzip a competition's files where the notebooks look")
    w.add_argument("competition", metavar="SLUG", help="the competition's name in its URL")
    w.add_argument("--out", help="folder to unzip into (default: ./input/<SLUG>, found when DATA_DIR is None)")
    w.add_argument("--force", action="store_true", help="download again over files already there")

    m = sub.add_parser("submit", help="verify a submission file, then submit it to a competition")
    m.add_argument("file", help="the submission CSV")
    m.add_argument("--competition", required=True, help="the competition's name in its URL")
    m.add_argument("-m", "--message", required=True, help="submission description")
    m.add_argument("--sample", help="sample_submission.csv to verify against (default: next to FILE, "
                                    "else in ./input/<competition>)")

    o = sub.add_parser("restore", help="continue a run saved in a Kaggle notebook's output: download it into a "
                                       "run folder that has no run yet")
    o.add_argument("kernel", metavar="OWNER/SLUG", help="the notebook as in its URL kaggle.com/code/OWNER/SLUG "
                                                         "(OWNER/SLUG/VERSION for one version; default: the latest)")
    o.add_argument("--out", required=True, help="the run folder to fill (OUTPUT_DIR of the run that continues)")
    o.add_argument("--run-name", help="the RUN_NAME of the saved run, when the output holds it in a folder of that "
                                      "name (default: the output's root, else its only run folder)")

    b = sub.add_parser("bundle", help="build wheels for internet-off notebooks, to upload as a Kaggle dataset")
    b.add_argument("--out", required=True, help="folder for the wheels (new, empty, or an earlier bundle)")
    scope = b.add_mutually_exclusive_group()
    scope.add_argument("--only-missing", dest="all", action="store_false",
                       help="the kit + the packages Kaggle's image lacks (default)")
    scope.add_argument("--all", dest="all", action="store_true",
                       help="the kit + every dependency, torch included (large)")
    b.add_argument("--packages", nargs="+", default=[], metavar="SPEC",
                   help="more requirements to include, e.g. 'lightgbm==4.5.0'")
    b.add_argument("--dataset", metavar="OWNER/NAME",
                   help="dataset id for dataset-metadata.json (default: <your user>/kagglekit-nb-wheels)")

    g = sub.add_parser("weights", help="save models' pretrained weights as a Kaggle dataset, for internet-off "
                                       "notebooks")
    g.add_argument("models", nargs="+", metavar="MODEL",
                   help="timm model names (resnet18, convnext_tiny.fb_in22k) or smp encoders (resnet34, tu-...)")
    g.add_argument("--out", required=True, help="folder for the dataset (one folder per model inside)")
    g.add_argument("--dataset", metavar="OWNER/NAME",
                   help="dataset id for dataset-metadata.json (default: <your user>/kagglekit-weights)")
    return p


def _demo(args: argparse.Namespace) -> int:
    from .demo import make_demo

    options: dict = {"seed": args.seed}
    if args.kind == "classification":
        options.update(image_size=args.image_size, id_style=args.id_style, label_style=args.label_style,
                       color=args.color)
    elif args.kind == "glacier" and args.tile_size is not None:
        options["tile_size"] = args.tile_size
    elif args.kind == "isic" and args.images is not None:
        options["n_train"] = args.images
    out = make_demo(args.kind, args.out, **options)
    print(f"wrote the {args.kind} demo competition to {out}")
    return 0


def _run(args: argparse.Namespace, start: float) -> int:
    from .runner import NotebookFailed, execute

    try:
        result = execute(args.notebook, out=args.out, data=args.data, budget=args.budget,
                         params=[tuple(p) for p in args.param], start=start, stream=not args.quiet)
    except NotebookFailed as e:
        print(f"kagglekit run: {e}", file=sys.stderr)
        return 1
    out = Path(result.output).parent
    stopped = f" (stopped early by {result.stopped_by}: training resumes on the next run)" if result.stopped_by else ""
    print(f"\nfinished {result.notebook.name} in {result.seconds:.0f}s{stopped}; executed notebook: {result.output}")
    for name in ("submission.csv", "verification.json", "run.json"):
        if (out / name).exists():
            print(f"  {name:18s} {out / name}")
    if result.stopped_by:  # the conventional status of a job ended by that signal, after a clean finish
        import signal

        return 128 + int(getattr(signal, result.stopped_by))
    return 0


def _batch(args: argparse.Namespace) -> int:
    from .batch import load_grid, run_batch

    runs = run_batch(args.notebook, out=args.out, grid=load_grid(args.grid), data=args.data, budget=args.budget,
                     parallel=args.parallel, params=[tuple(p) for p in args.param])
    failed = [r for r in runs if r.status.startswith("failed")]
    for r in failed:
        print(f"kagglekit batch: {r.name} failed: {r.message or 'see its log'} ({r.dir / 'batch.log'})",
              file=sys.stderr)
    return 1 if failed else 0


def _blend(args: argparse.Namespace) -> int:
    from .ensemble import BLEND_FILE, blend_runs

    result = blend_runs(args.runs, args.out, metric=args.metric, sample=args.sample)
    print(result.table.to_string(float_format=lambda x: f"{x:.4f}"))
    print(f"\n{result.scored_on}; blend: {Path(args.out) / BLEND_FILE}")
    if not result.valid:
        print(f"kagglekit blend: the blended submission is not valid; see {Path(args.out) / BLEND_FILE}",
              file=sys.stderr)
        return 1
    print(f"submission (verified): {result.submission}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from .runner import LAYOUTS, NOTEBOOKS

    width = max(map(len, NOTEBOOKS))
    for name, file in NOTEBOOKS.items():
        print(f"{name.ljust(width)}  {file}\n{' ' * width}  {LAYOUTS[name]}")
    print("\nkagglekit new NAME [PATH] writes a copy to edit; kagglekit run NAME --out DIR runs one.")
    return 0


def _new(args: argparse.Namespace) -> int:
    from .runner import new_notebook

    try:
        written = new_notebook(args.notebook, args.path, force=args.force, with_py=args.py)
    except FileExistsError as e:
        print(f"kagglekit new: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    print(f"run it with: kagglekit run {written[0]} --out runs/{written[0].stem}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .verification import verify

    if not Path(args.sample).is_file():
        print(f"kagglekit verify: --sample {args.sample} does not exist: pass the competition's "
              "sample_submission.csv.", file=sys.stderr)
        return 2
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    report = verify(args.submission, args.sample, labels=labels, kind=args.kind)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0 if report.valid else 1


def _env(args: argparse.Namespace) -> int:
    from .hardware import environment_report, format_report

    report = environment_report()
    print(json.dumps(report, indent=2, default=str) if args.json else format_report(report))
    return 0


def _push(args: argparse.Namespace, api_factory: Callable[[], Any] | None) -> int:
    from .kaggle_io import KERNEL_METADATA_FILE, push

    result = push(args.notebook, competition=args.competition, datasets=args.dataset, kernels=args.kernel,
                  gpu=args.gpu, internet=args.internet == "on", public=args.public, title=args.title,
                  out=args.out, dry_run=args.dry_run, api_factory=api_factory)
    if args.dry_run:
        print(f"{result.folder / KERNEL_METADATA_FILE}:\n{json.dumps(result.metadata, indent=2)}")
    return 0


def _download(args: argparse.Namespace, api_factory: Callable[[], Any] | None) -> int:
    from .kaggle_io import download

    folder = download(args.competition, args.out, force=args.force, api_factory=api_factory)
    print(f"run a notebook on it with: kagglekit run NOTEBOOK --data {folder} --out runs/{args.competition}")
    return 0


def _submit(args: argparse.Namespace, api_factory: Callable[[], Any] | None) -> int:
    from .kaggle_io import SubmissionRefused, submit

    try:
        submit(args.file, competition=args.competition, message=args.message, sample=args.sample,
               api_factory=api_factory)
    except SubmissionRefused as e:
        print(f"kagglekit submit: {e}", file=sys.stderr)
        return 1
    return 0


def _restore(args: argparse.Namespace, api_factory: Callable[[], Any] | None) -> int:
    from .kaggle_io import restore_output

    try:
        folder = restore_output(args.kernel, args.out, run_name=args.run_name, api_factory=api_factory)
    except FileExistsError as e:
        print(f"kagglekit restore: {e}", file=sys.stderr)
        return 1
    print(f"continue it with: kagglekit run NOTEBOOK --out {folder}")
    return 0


def _bundle(args: argparse.Namespace, api_factory: Callable[[], Any] | None) -> int:
    from .bundle import build_bundle

    build_bundle(args.out, all_dependencies=args.all, packages=args.packages, dataset=args.dataset,
                 api_factory=api_factory)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from . import env
    from .tasks.competition import Overrides, read

    names = {f.upper(): f for f in Overrides.__dataclass_fields__}
    values = {}
    for name, value in args.param:
        if name.upper() not in names:
            raise ValueError(f"-p {name}: inspect takes {', '.join(names)}.")
        values[names[name.upper()]] = value
    data = Path(args.data)
    if not data.is_dir():
        raise FileNotFoundError(f"{data} is not a folder: pass the competition's folder (DATA_DIR).")
    scratch = Path(args.scratch) if args.scratch else env.make_scratch_dir(log=lambda m: print(m, file=sys.stderr))
    comp = read(data, Overrides(**values), scratch=scratch, log=lambda m: print(m, file=sys.stderr))
    if args.json:
        print(json.dumps([{"decision": d.what, "value": d.value, "how": d.how, "override": d.parameter}
                          for d in comp.decisions], indent=2))
    else:
        print(f"how the classification notebook reads {data}:\n{comp.describe()}")
    return 0


def _weights(args: argparse.Namespace) -> int:
    from .bundle import _check_dataset
    from .weights import save_weights

    if args.dataset is not None:
        _check_dataset(args.dataset)
    save_weights(args.models, args.out, dataset=args.dataset)
    return 0


def main(argv: Sequence[str] | None = None, *, kaggle_api_factory: Callable[[], Any] | None = None) -> int:
    """Run the command line; `kaggle_api_factory` replaces `kaggle_io.connect` (a fake API in tests)."""
    from .bundle import BundleError
    from .kaggle_io import KaggleError
    from .weights import WeightsError

    start = time.monotonic()
    args = build_parser().parse_args(argv)
    kaggle_commands = {"push": _push, "download": _download, "submit": _submit, "restore": _restore,
                       "bundle": _bundle}
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "run":
            return _run(args, start)
        if args.command in ("batch", "blend"):
            return _batch(args) if args.command == "batch" else _blend(args)
        if args.command == "verify":
            return _verify(args)
        if args.command == "inspect":
            return _inspect(args)
        if args.command == "weights":
            return _weights(args)
        if args.command in ("list", "new"):
            return _list(args) if args.command == "list" else _new(args)
        if args.command in kaggle_commands:
            return kaggle_commands[args.command](args, kaggle_api_factory)
        return _env(args)
    except (KaggleError, BundleError, WeightsError) as e:
        print(f"kagglekit {args.command}: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:
        print(f"kagglekit {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
