"""The command line of serial training, `python -m numpy_cnn.train MODEL`; `launch` builds on its flags."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable

from . import checkpoint
from .config import DEFAULT_SHARDS, DEFAULT_SHIFT, OWN_MODEL, Config
from .data.datasets import describe_source
from .model_ref import SYNTAX
from .models import DEFAULT_EPOCHS, MODELS
from .schedules import SCHEDULES


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag costs one line and a pointer to --help, as git and cargo print it,
    not the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n(see '{self.prog} --help' for every flag)\n")


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


def add_arguments(
    parser: argparse.ArgumentParser, metrics_keys: str = "", shards: int | None = None, step_keys: str = ""
) -> None:
    """The training flags; distributed training takes the same ones (and adds `metrics_keys` to the
    epoch lines' keys and `step_keys` to the step lines')."""
    parser.add_argument(
        "model",
        metavar="MODEL",
        help=f"{' or '.join(sorted(MODELS))} (the original NumPy-CNN write-up's), or your own: {SYNTAX}, "
        "a function that takes a seeded numpy Generator (and, if it likes, the keywords sample_shape= "
        "and classes=) and returns a Net",
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="passes over the training set (default: the original write-up's, "
        + ", ".join(f"{k} {v}" for k, v in DEFAULT_EPOCHS.items())
        + f", your own model {OWN_MODEL['epochs']})",
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
        metavar="NAME|PATH",
        default="mnist",
        help="mnist, the drop-in fashion-mnist, or your own: a .npz file with x_train, y_train, x_test, "
        "y_test, or a folder of those four .npy files (memory-mapped) or of IDX files in MNIST's "
        "layout (default: %(default)s)",
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
        help="write the final weights here, one array per parameter, and what they are (model, "
        "sample shape, classes: python -m numpy_cnn.evaluate PATH.npz needs nothing else)",
    )
    parser.add_argument(
        "--metrics",
        metavar="PATH.jsonl",
        default=None,
        help='write JSON lines: first the run\'s settings ({"type": "config", ...}), then one per epoch '
        '({"type": "epoch", ...}): epoch, step, loss, train_acc, test_acc, seconds, samples_per_s'
        + metrics_keys,
    )
    parser.add_argument(
        "--log-every",
        metavar="STEPS",
        type=positive_int,
        default=None,
        help='also write a line to --metrics every STEPS optimizer steps ({"type": "step", ...}): step, '
        "epoch, loss and train_acc of those steps, lr" + step_keys,
    )
    parser.add_argument(
        "--trace",
        metavar="PATH.json",
        default=None,
        help="write a Chrome trace-event file of where the time goes (open it in ui.perfetto.dev or "
        "chrome://tracing)",
    )
    parser.add_argument(
        "--trace-steps",
        metavar="FIRST:LAST",
        default=None,
        help="the optimizer steps --trace records, counted from 1 as in --metrics; 100: means from step "
        "100 to the end (default: 1:50). Evaluations and events such as a lost worker are always kept",
    )
    parser.add_argument(
        "--shards",
        type=positive_int,
        default=shards,
        help="micro-shards each batch is cut into; fixes the order of the gradient sum, so runs "
        "with the same --shards agree bit for bit (default: "
        + (
            str(shards)
            if shards
            else ", ".join(f"{k} {v}" for k, v in DEFAULT_SHARDS.items())
            + f", your own model {OWN_MODEL['shards']}"
        )
        + ")",
    )
    parser.add_argument(
        "--shift",
        type=non_negative_int,
        default=None,
        metavar="PIXELS",
        help="augmentation: translate each training image by up to this many pixels, drawn from "
        "(seed, epoch) (default: "
        + ", ".join(f"{k} {v}" for k, v in DEFAULT_SHIFT.items())
        + f", your own model {OWN_MODEL['shift']})",
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
        "--init-from",
        metavar="FILE",
        default=None,
        help="start from the weights in FILE (a --save file or a checkpoint) instead of random ones, "
        "with a fresh optimizer: fine-tuning, or more epochs after a finished run (ignored with "
        "--resume, whose checkpoint has the weights)",
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float32",
        help="precision of weights and arithmetic; float64 is for checking (default: %(default)s)",
    )


def parse_config(
    parser: argparse.ArgumentParser,
    argv: list[str] | None = None,
    config_type: type[Config] = Config,
    outputs: bool = True,
) -> tuple[Config, argparse.Namespace]:
    """Parse the flags into a checked `config_type` (Config, or a subclass with more fields);
    `outputs`: also check the paths this process writes (--save, --metrics, checkpoints)."""
    args = parser.parse_args(argv)
    fields = config_type.__dataclass_fields__
    config = config_type(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        config.check_data()
        if outputs:
            config.check_paths()
        config.check()
        config.check_model()
    except ValueError as e:
        parser.error(str(e))
    return config, args


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m numpy_cnn.train",
        description="Train a model (one of the original NumPy-CNN write-up's, or your own) on MNIST in "
        "this process (serial training).",
    )
    add_arguments(parser)
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="threads computing the micro-shards; any count gives the same bits "
        "(default: min(cores, --shards))",
    )
    return parser


def describe(config: Config, parallel: str = "") -> str:
    """The run's settings in one short line (the metrics file's first line has all of them)."""
    shift = f", shifts up to {config.max_shift} px" if config.max_shift else ""
    steps = f", at most {config.max_steps} steps" if config.max_steps else ""
    return (
        f"{config.model} on {config.dataset} ({describe_source(config.dataset, config.data_dir)}): "
        f"{config.n_epochs} epochs{steps}, batch {config.batch_size} in {config.n_shards} "
        f"micro-shard{'s' if config.n_shards > 1 else ''}"
        f"{parallel}, lr {config.lr:g} {config.lr_schedule}{shift}, seed {config.seed}"
    )


def summary(config: Config, history: list[dict], seconds: float) -> str:
    """One line to end a run: best and final test accuracy, time, and where the results went."""
    if history:
        best = max(history, key=lambda r: r["test_acc"])
        result = (
            f"best test accuracy {100 * best['test_acc']:.2f}% (epoch {best['epoch']}), "
            f"final {100 * history[-1]['test_acc']:.2f}% after step {history[-1]['step']}"
        )
    else:
        result = "no epoch trained"
    weights = f"weights in {config.save}" if config.save else "weights not saved (--save PATH.npz keeps them)"
    metrics = f", metrics in {config.metrics}" if config.metrics else ""
    return f"done: {result}, in {format_duration(seconds)}; {weights}{metrics}"


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{seconds:.1f} s"


def resume_hint(config: Config) -> str:
    """What to do to continue a run that stopped before its end."""
    if config.checkpoint_dir and checkpoint.has_checkpoints(config.checkpoint_dir):
        return f"to continue, run the same command with --resume {config.checkpoint_dir}"
    if config.resume:  # nothing newer than what it resumed from: the same command resumes again
        return f"to continue, run the same command again (it resumes from {config.resume})"
    if config.checkpoint_dir:
        return f"no checkpoint was written to {config.checkpoint_dir} yet: the run has to start again"
    return "this run wrote no checkpoints; with --checkpoint-dir DIR a stopped run can be resumed"


def run(argv: list[str] | None, train: Callable[[Config], tuple[object, list[dict]]]) -> int:
    """Serial training from the command line: parse `argv`, then `train` (numpy_cnn.train.train,
    passed in so that this module never imports the loop that imports it)."""
    config, _ = parse_config(build_parser(), argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # e.g. which mirror is fetched
    print(describe(config), flush=True)
    started = time.monotonic()
    try:
        _, history = train(config)
    except KeyboardInterrupt:
        print(f"interrupted; {resume_hint(config)}", file=sys.stderr)
        return 130
    except (OSError, ValueError, RuntimeError) as e:  # CheckpointError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary(config, history, time.monotonic() - started), flush=True)
    return 0
