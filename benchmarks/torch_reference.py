"""PyTorch doing the same training, as the yardstick for benchmarks/speed.py (never a dependency).

    python benchmarks/torch_reference.py --model conv-net --steps 300 --threads 2
    python benchmarks/torch_reference.py --model conv-net --steps 300 --ddp 2

The same architecture, MNIST batches of 64 from numpy_cnn's own loader, Adam; it prints one JSON
line with samples/s over the training steps (start-up excluded, like numpy_cnn's metrics). With
--ddp N it runs DistributedDataParallel over gloo on 127.0.0.1: N processes with 1 thread each,
each taking 64/N samples of every global batch of 64.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from numpy_cnn.data import batch_indices, epoch_order, load, to_float
from numpy_cnn.models import input_shape


def make(model: str) -> nn.Module:
    if model == "fc-net":
        return nn.Sequential(
            nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 100), nn.ReLU(), nn.Linear(100, 10)
        )
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    )


def train(model: str, steps: int, data_dir: str | None, rank: int = 0, world: int = 1) -> float:
    """Seconds for `steps` optimizer steps of global batch 64 (this rank's 64/world share)."""
    data = load("mnist", data_dir)
    shape = input_shape(model)
    torch.manual_seed(0)
    net = make(model)
    if world > 1:
        net = nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    loss_f = nn.CrossEntropyLoss()
    order = epoch_order(len(data.train), 0, 0)
    # the batches are made up front, so only training is timed
    batches = []
    for step in range(steps):
        idx = batch_indices(order, 64, step % 937)
        idx = np.array_split(idx, world)[rank]
        batches.append(
            (
                torch.from_numpy(to_float(data.train.images[idx], shape)),
                torch.from_numpy(data.train.labels[idx]),
            )
        )
    start = time.perf_counter()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss = loss_f(net(x), y)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def _ddp_rank(rank: int, world: int, port: int, model: str, steps: int, data_dir: str | None, out) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        seconds = train(model, steps, data_dir, rank, world)
        dist.barrier()
        if rank == 0:
            out.put(seconds)
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="conv-net", choices=["conv-net", "fc-net"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads (no --ddp)")
    parser.add_argument("--ddp", type=int, default=0, metavar="N", help="DDP over gloo with N processes")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    if args.ddp:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        queue = mp.get_context("spawn").SimpleQueue()
        mp.spawn(
            _ddp_rank, args=(args.ddp, port, args.model, args.steps, args.data_dir, queue), nprocs=args.ddp
        )
        seconds, mode = queue.get(), f"ddp-{args.ddp}x1"
    else:
        torch.set_num_threads(args.threads)
        seconds, mode = train(args.model, args.steps, args.data_dir), f"{args.threads}-threads"
    print(
        json.dumps(
            {"mode": mode, "samples_per_s": round(64 * args.steps / seconds, 1), "torch": torch.__version__}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
