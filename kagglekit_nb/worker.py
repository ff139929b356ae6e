"""What torchrun starts in every training process: `python -m kagglekit_nb.worker SPEC`.

    python -m torch.distributed.run --nproc-per-node 2 -m kagglekit_nb.worker RUN_DIR/workers/spec.json

The spec is written by a task's `train` in the notebook process (`distributed.launch`): the task, the
world (backend), and what the task needs to re-create its config, run and data. The worker joins the
process group, hands the spec to the task's `train_worker`, and rank 0 writes `result.json` next to the
spec, which tells the notebook that the workers finished (stopped by a signal or the budget included)
and where each rank stopped. `--budget` gives a launch by hand (another machine, later) a budget of its
own, counted from its start, instead of what was left of the notebook's.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import record

from . import distributed
from ._atomic import write_json

# The tasks that run in several processes: a spec's "task" -> the module whose `train_worker` runs in each
# (classification and glacier train there, ISIC extracts its embeddings).
TASKS = {"classification": "kagglekit_nb.tasks.classification",
         "glacier_pretrain": "kagglekit_nb.tasks.glacier.pretrain",
         "glacier_finetune": "kagglekit_nb.tasks.glacier.finetune",
         "isic": "kagglekit_nb.tasks.isic.pipeline"}


def _read_spec(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"SPEC {path} does not exist: a task's train step writes it into "
                                f"<OUTPUT_DIR>/{distributed.WORKERS_DIR}/{distributed.SPEC_FILE}.")
    spec = json.loads(path.read_text())
    if spec.get("task") not in TASKS:
        raise ValueError(f"SPEC {path} names the task {spec.get('task')!r}; the tasks that train in several "
                         f"processes are {', '.join(TASKS)}.")
    return spec


@record  # a failing rank's traceback goes to torchrun's error file, which the notebook reads
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kagglekit_nb.worker",
                                     description="One training process of a multi-process run (started by torchrun).")
    parser.add_argument("spec", type=Path, help="the run's workers/spec.json")
    parser.add_argument("--budget", default=None, help="a budget counted from now (e.g. 2h) instead of the notebook's")
    args = parser.parse_args(argv)
    spec = _read_spec(args.spec)
    if args.budget is not None:
        from .budget import parse_duration

        spec["run"]["budget"] = {**spec["run"]["budget"], "total_s": parse_duration(args.budget, name="--budget"),
                                 "elapsed_s": 0.0, "wall": None}
    device = distributed.join(spec["world"]["backend"])
    finished = False
    try:
        if not distributed.is_main():
            warnings.simplefilter("ignore")  # rank 0 speaks for all; errors still print in full
        task = importlib.import_module(TASKS[spec["task"]])
        where = distributed.gather_objects(task.train_worker(spec, device))
        if distributed.is_main():
            write_json(args.spec.parent / distributed.RESULT_FILE, {"launch": spec.get("launch"), "ranks": where},
                       default=str)
        finished = True
    finally:
        distributed.leave(wait=finished)
    return 0


if __name__ == "__main__":
    sys.exit(main())
