"""The same small `fit` in one process or in several started by torchrun: a model without BatchNorm
trained through the kit's loaders and loop, on a train set whose size does not divide by the batch.
Rank 0 saves the final weights and the history to OUT.

    python tests/ddp_fit.py OUT                                                # one process
    python -m torch.distributed.run --nproc-per-node 2 tests/ddp_fit.py OUT    # two (gloo)

BATCH is the batch of one optimizer step, split between the processes, so both runs take the same steps
over the same samples: their weights agree up to the order in which gradients are summed
(tests/test_distributed.py).
"""
from __future__ import annotations

import os
import sys

import torch
from torch import nn
from torch.utils.data import TensorDataset

from kagglekit_nb import distributed
from kagglekit_nb.loaders import make_loader
from kagglekit_nb.loop import fit
from kagglekit_nb.metrics import get_metric

N_TRAIN, N_VAL, BATCH, EPOCHS = 125, 41, 24, 3   # 5 steps per epoch (the last 5 samples wait for the next)


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long())


def main(out: str) -> None:
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if several:
        distributed.join("gloo")
    finished = False
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
        train = make_loader(_data(N_TRAIN, 1), BATCH // distributed.world_size(), train=True, seed=3, num_workers=0)
        val = make_loader(_data(N_VAL, 2), 16, train=False, num_workers=0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
        result = fit(distributed.wrap(model, torch.device("cpu")), train, val, optimizer=optimizer,
                     loss_fn=nn.CrossEntropyLoss(), epochs=EPOCHS, device="cpu", metric=get_metric("accuracy"),
                     log=None)
        if distributed.is_main():
            torch.save({"weights": model.state_dict(), "history": result.history, "steps": result.steps}, out)
        finished = True
    finally:
        distributed.leave(wait=finished)


if __name__ == "__main__":
    main(sys.argv[1])
