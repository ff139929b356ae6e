"""Command line: `python -m kagglekit_nb …` or `kagglekit …`.

    demo {classification} --out DIR [--seed N]     write a demo competition in the real layout
    run NOTEBOOK [--data DIR] --out DIR [--budget 10m] [-p NAME VALUE]...
    verify SUBMISSION --sample SAMPLE [--labels a,b] [--json]
    env [--json]

Exit codes: 0 success, 1 failure (a failed notebook, an invalid submission), 2 usage error.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "build_parser"]


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

    v = sub.add_parser("verify", help="check a submission file against the sample submission")
    v.add_argument("submission")
    v.add_argument("--sample", required=True, help="the competition's sample_submission.csv")
    v.add_argument("--labels", help="comma-separated legal labels, e.g. cat,dog")
    v.add_argument("--json", action="store_true", help="print the report as JSON")

    e = sub.add_parser("env", help="platform, paths, hardware and library versions")
    e.add_argument("--json", action="store_true")
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
    print(f"\nfinished {result.notebook.name} in {result.seconds:.0f}s; executed notebook: {result.output}")
    for name in ("submission.csv", "verification.json", "run.json"):
        if (out / name).exists():
            print(f"  {name:18s} {out / name}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .submission import verify

    if not Path(args.sample).is_file():
        print(f"kagglekit verify: --sample {args.sample} does not exist: pass the competition's "
              "sample_submission.csv.", file=sys.stderr)
        return 2
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    report = verify(args.submission, args.sample, labels=labels)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0 if report.valid else 1


def _env(args: argparse.Namespace) -> int:
    from .env import environment_report, format_report

    report = environment_report()
    print(json.dumps(report, indent=2, default=str) if args.json else format_report(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    start = time.monotonic()
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "run":
            return _run(args, start)
        if args.command == "verify":
            return _verify(args)
        return _env(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"kagglekit {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
