"""Serial training, the seed's loop: `python -m numpy_cnn.train MODEL`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from . import checkpoint
from .data import batches, load, steps_per_epoch
from .data.mnist import DATASETS
from .loss import CrossEntropyLoss
from .metrics import evaluate
from .models import DEFAULT_EPOCHS, MODELS, build, input_shape
from .net import Net
from .optim import Adam
from .runbook import RunBook
from .schedules import SCHEDULES
from .shards import Node, shard_bounds, tree_sum

# Measured on 2 cores (benchmarks/speed.py): the conv-net's elementwise layers are single-threaded in
# NumPy, so two shards on two threads beat one batch on two BLAS threads by about 1.3x; the fc-net
# is a few small GEMMs, which one batch on two BLAS threads does 1.5x faster than shards.
DEFAULT_SHARDS = {"fc-net": 1, "conv-net": 2}
# Random translations by up to 2 pixels lift the conv-net from 99.08-99.12% to 99.36-99.39% after 12
# epochs (seeds 0 and 1); an MLP has no use for them.
DEFAULT_SHIFT = {"fc-net": 0, "conv-net": 2}


@dataclass
class Config:
    """Everything that defines a training run; the same seed gives the same run, bit for bit."""

    model: str
    epochs: int | None = None  # None: the seed's count for this model
    batch_size: int = 64
    lr: float = 2e-3
    lr_schedule: str = "cosine"
    seed: int = 0
    max_steps: int | None = None
    dataset: str = "mnist"
    data_dir: str | None = None
    save: str | None = None
    metrics: str | None = None
    dtype: str = "float32"
    shards: int | None = None  # micro-shards per batch (None: DEFAULT_SHARDS); fixes the sum's order
    threads: int | None = None  # threads computing them (default: min(cores, shards)); bits unchanged
    shift: int | None = None  # augmentation: translate images by up to this many pixels (None: default)
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None  # steps; checkpoints are also written at every epoch end
    resume: str | None = None  # a checkpoint folder to continue from

    def identity(self) -> dict:
        """The settings with defaults resolved: what a resumed run must share with the checkpointed one."""
        return {**asdict(self), "epochs": self.n_epochs, "shards": self.n_shards, "shift": self.n_shift}

    @property
    def n_shift(self) -> int:
        return self.shift if self.shift is not None else DEFAULT_SHIFT[self.model]

    @property
    def n_shards(self) -> int:
        return self.shards if self.shards is not None else DEFAULT_SHARDS[self.model]

    @property
    def n_epochs(self) -> int:
        return self.epochs if self.epochs is not None else DEFAULT_EPOCHS[self.model]

    def lr_at(self, step: int, steps_per_epoch: int) -> float:
        """The learning rate of optimizer step `step` (0-based): a pure function of the config."""
        return SCHEDULES[self.lr_schedule](self.lr, step, self.n_epochs * steps_per_epoch)


def epoch_record(
    epoch: int,
    step: int,
    loss: float,
    train_acc: float,
    test_acc: float,
    seconds: float,
    samples: int,
) -> dict:
    """One line of --metrics output; distributed training writes the same keys."""
    return {
        "epoch": epoch,
        "step": step,
        "loss": round(loss, 6),
        "train_acc": round(train_acc, 6),
        "test_acc": round(test_acc, 6),
        "seconds": round(seconds, 4),
        "samples_per_s": round(samples / seconds, 1) if seconds > 0 else None,
    }


def format_record(r: dict, epochs: int) -> str:
    return (
        f"epoch {r['epoch']}/{epochs}  step {r['step']}  loss {r['loss']:.4f}  "
        f"train {100 * r['train_acc']:.2f}%  test {100 * r['test_acc']:.2f}%  "
        f"{r['seconds']:.2f} s  {r['samples_per_s']} samples/s"
    )


def shard_gradient(
    net: Net, loss_f: CrossEntropyLoss, x: np.ndarray, y: np.ndarray, total: int
) -> tuple[float, int]:
    """Forward and backward on one micro-shard of a `total`-sample batch: fills net's gradients
    with those of (sum of the shard's losses) / total, so the shards' gradients add up to the
    batch's mean gradient. Returns (sum of losses, correct count)."""
    if len(y) == 0:  # a short last batch can leave a micro-shard empty
        for p in net.parameters:
            p.grad.fill(0)
        return 0.0, 0
    preds = net.forward(x)
    loss = loss_f.loss(preds, y) * len(y)
    net.backward(loss_f.grad(preds, y, total=total))
    return loss, int(np.sum(preds.argmax(axis=1) == y))


class ShardedStep:
    """Forward and backward of one batch as `shards` micro-shards on a thread pool.

    Each micro-shard has its own replica of the net (sharing the weight arrays, owning its
    gradients and caches) and one BLAS thread, so its gradient has the same bits whichever thread
    computes it; the shards' gradients are added in numpy_cnn.shards' fixed tree. With the same
    --shards, serial training and `launch` therefore produce the same weights bit for bit.
    """

    def __init__(self, config: Config, net: Net) -> None:
        self.net, self.shards = net, config.n_shards
        self.loss = CrossEntropyLoss()
        self.replicas = [net]
        if self.shards > 1:
            self.replicas = [
                build(config.model, seed=config.seed, dtype=config.dtype) for _ in range(self.shards)
            ]
            for replica in self.replicas:
                for rp, p in zip(replica.parameters, net.parameters):
                    rp.data = p.data  # the optimizer updates these arrays in place: replicas follow
        threads = config.threads or min(os.cpu_count() or 1, self.shards)
        self.pool = ThreadPoolExecutor(threads) if threads > 1 and self.shards > 1 else None
        self.scratch: dict[Node, list[np.ndarray]] = {}

    def _leaf(self, k: int, x: np.ndarray, y: np.ndarray, bounds: list, total: int) -> tuple[float, int]:
        lo, hi = bounds[k]
        return shard_gradient(self.replicas[k], self.loss, x[lo:hi], y[lo:hi], total)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        """Fill the net's gradients for batch (x, y); returns (sum of losses, correct count)."""
        bounds = shard_bounds(len(y), self.shards)
        leaves = range(self.shards)
        run = self.pool.map if self.pool is not None else map
        results = list(run(lambda k: self._leaf(k, x, y, bounds, len(y)), leaves))
        if self.shards > 1:
            parts = {(k, k + 1): [p.grad for p in self.replicas[k].parameters] for k in leaves}
            for p, g in zip(self.net.parameters, tree_sum((0, self.shards), parts, self.scratch)):
                p.grad = g
        return sum(r[0] for r in results), sum(r[1] for r in results)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def train(
    config: Config, progress: bool | None = None, log: Callable[[str], None] = print
) -> tuple[Net, list[dict]]:
    """Train `config.model` on `config.dataset`; returns the net and one record per epoch."""
    data = load(config.dataset, config.data_dir)
    shape = input_shape(config.model)
    net = build(config.model, seed=config.seed, dtype=config.dtype)
    optimizer = Adam(net.parameters, lr=config.lr)
    per_epoch = steps_per_epoch(len(data.train), config.batch_size)
    book = RunBook(config, net, optimizer, per_epoch, log)
    step_fn = ShardedStep(config, net)
    # one BLAS thread per micro-shard while training: deterministic, and the shards use the cores
    blas_threads = 1 if config.n_shards > 1 else None
    progress = sys.stderr.isatty() if progress is None else progress
    try:
        for epoch, indices in book.epochs():
            total_loss, correct, seen = 0.0, 0, 0
            bar = tqdm(
                total=len(indices),
                desc=f"epoch {epoch + 1}",
                unit="step",
                leave=False,
                disable=not progress,
                file=sys.stderr,
            )
            start = time.perf_counter()
            with threadpool_limits(blas_threads):
                batch_iter = batches(
                    data.train.images,
                    data.train.labels,
                    config.batch_size,
                    config.seed,
                    epoch,
                    shape,
                    start=indices.start,
                    max_shift=config.n_shift,
                )
                for index, (x, y) in zip(indices, batch_iter):
                    loss_sum, right = step_fn(x, y)
                    optimizer.lr = config.lr_at(book.step, per_epoch)
                    optimizer.update()
                    book.stepped(book.step + 1, epoch, index + 1)
                    total_loss += loss_sum
                    correct += right
                    seen += len(y)
                    bar.update()
                    bar.set_postfix(loss=f"{loss_sum / len(y):.4f}", refresh=False)
            seconds = time.perf_counter() - start
            bar.close()
            record = epoch_record(
                epoch + 1,
                book.step,
                total_loss / max(seen, 1),
                correct / max(seen, 1),
                evaluate(net, data.test, shape),
                seconds,
                seen,
            )
            book.end_epoch(epoch, indices.stop, record)
            log(format_record(record, config.n_epochs))
    finally:
        step_fn.close()
        book.close()
    if config.save:
        net.save(config.save)
        log(f"saved {config.save}")
    return net, book.history


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser, metrics_keys: str = "", shards: int | None = None) -> None:
    """The training flags; distributed training takes the same ones (and adds `metrics_keys`)."""
    parser.add_argument("model", choices=sorted(MODELS), help="which of the seed's models to train")
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="passes over the training set (default: the seed's, "
        + ", ".join(f"{k} {v}" for k, v in DEFAULT_EPOCHS.items())
        + ")",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=64,
        help="samples per optimizer step (default: %(default)s)",
    )
    parser.add_argument(
        "--lr",
        type=positive_float,
        default=2e-3,
        help="Adam's base learning rate (default: %(default)s)",
    )
    parser.add_argument(
        "--lr-schedule",
        choices=sorted(SCHEDULES),
        default="cosine",
        help="cosine decays the rate to 0 over --epochs; constant keeps it (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="fixes the initial weights and every epoch's order (default: %(default)s)",
    )
    parser.add_argument(
        "--max-steps",
        type=positive_int,
        default=None,
        help="stop after this many optimizer steps in total",
    )
    parser.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default="mnist",
        help="mnist, or the drop-in fashion-mnist (default: %(default)s)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder with the four IDX files, raw or .gz (default: $NUMPY_CNN_DATA, "
        "then ~/.cache/numpy_cnn/DATASET, then download)",
    )
    parser.add_argument(
        "--save",
        metavar="PATH.npz",
        default=None,
        help="write the final weights here, one array per parameter",
    )
    parser.add_argument(
        "--metrics",
        metavar="PATH.jsonl",
        default=None,
        help="write one JSON line per epoch: epoch, step, loss, train_acc, test_acc, seconds, samples_per_s"
        + metrics_keys,
    )
    parser.add_argument(
        "--shards",
        type=positive_int,
        default=shards,
        help="micro-shards each batch is cut into; fixes the order of the gradient sum, so runs "
        "with the same --shards agree bit for bit (default: "
        + (str(shards) if shards else ", ".join(f"{k} {v}" for k, v in DEFAULT_SHARDS.items()))
        + ")",
    )
    parser.add_argument(
        "--shift",
        type=non_negative_int,
        default=None,
        metavar="PIXELS",
        help="augmentation: translate each training image by up to this many pixels, drawn from "
        "(seed, epoch) (default: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_SHIFT.items()) + ")",
    )
    parser.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        default=None,
        help="write checkpoints here (atomically; the newest 3 are kept) at every epoch end",
    )
    parser.add_argument(
        "--checkpoint-every",
        metavar="STEPS",
        type=positive_int,
        default=None,
        help="also write a checkpoint every STEPS optimizer steps",
    )
    parser.add_argument(
        "--resume",
        metavar="DIR",
        default=None,
        help="continue from the newest valid checkpoint in DIR; the result is bitwise that of an "
        "uninterrupted run",
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float32",
        help="precision of weights and arithmetic; float64 is for checking (default: %(default)s)",
    )


def check_writable(parser: argparse.ArgumentParser, path: str | None, flag: str) -> None:
    if path is None:
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        parser.error(f"{flag} {path}: folder {directory} does not exist or is not writable")
    if os.path.isdir(path):
        parser.error(f"{flag} {path}: is a folder")


def parse_config(
    parser: argparse.ArgumentParser, argv: list[str] | None = None, config_type: type[Config] = Config
) -> tuple[Config, argparse.Namespace]:
    """Parse the flags into `config_type` (Config, or a subclass with more fields)."""
    args = parser.parse_args(argv)
    check_writable(parser, args.save, "--save")
    check_writable(parser, args.metrics, "--metrics")
    fields = config_type.__dataclass_fields__
    config = config_type(**{k: v for k, v in vars(args).items() if k in fields})
    if config.checkpoint_every and not config.checkpoint_dir:
        parser.error("--checkpoint-every needs --checkpoint-dir")
    if config.checkpoint_dir:
        folder = os.path.abspath(config.checkpoint_dir)
        while not os.path.exists(folder):
            folder = os.path.dirname(folder)
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            parser.error(f"--checkpoint-dir {config.checkpoint_dir}: {folder} is not a writable folder")
        resuming_here = config.resume and os.path.abspath(config.resume) == os.path.abspath(
            config.checkpoint_dir
        )
        if checkpoint.has_checkpoints(config.checkpoint_dir) and not resuming_here:
            parser.error(
                f"--checkpoint-dir {config.checkpoint_dir} already holds checkpoints: pass "
                f"--resume {config.checkpoint_dir} to continue them, or choose another folder"
            )
    if config.resume:
        try:
            checkpoint.check_resumable(checkpoint.latest(config.resume).meta, config.identity())
        except checkpoint.CheckpointError as e:
            parser.error(f"--resume {config.resume}: {e}")
    return config, args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m numpy_cnn.train",
        description="Train one of the seed's models on MNIST in this process (serial training).",
    )
    add_arguments(parser)
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="threads computing the micro-shards; any count gives the same bits "
        "(default: min(cores, --shards))",
    )
    config, _ = parse_config(parser, argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # e.g. which mirror is fetched
    print("config " + json.dumps(asdict(config)), flush=True)
    try:
        train(config)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, RuntimeError) as e:  # CheckpointError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
