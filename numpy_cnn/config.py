"""Config: everything that defines a training run, its defaults, and the checks it must pass."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import numpy as np

from . import checkpoint
from .data import datasets
from .data.mnist import FILES, DataNotFound, given_dir
from .model_ref import canonical
from .models import DEFAULT_EPOCHS, MODELS, build, check_importable, check_name, input_shape, needs_data
from .schedules import SCHEDULES
from .trace import DEFAULT_STEPS, parse_steps

# Measured on 2 cores (benchmarks/speed.py): the conv-net's elementwise layers are single-threaded in
# NumPy, so two shards on two threads beat one batch on two BLAS threads by about 1.3x; the fc-net
# is a few small GEMMs, which one batch on two BLAS threads does 1.5x faster than shards.
DEFAULT_SHARDS = {"fc-net": 1, "conv-net": 2}
# Random translations by up to 2 pixels lift the conv-net from 99.08-99.12% to 99.36-99.39% after 12
# epochs (seeds 0 and 1); an MLP has no use for them.
DEFAULT_SHIFT = {"fc-net": 0, "conv-net": 2}
# A model of your own: 10 epochs, one micro-shard in serial training (the batch on every BLAS
# thread), no shifts (they only suit images: --shift turns them on).
OWN_MODEL = {"epochs": 10, "shards": 1, "shift": 0}


@dataclass
class Config:
    """Everything that defines a training run; the same seed gives the same run, bit for bit."""

    model: str
    epochs: int | None = None  # None: the original write-up's count for this model
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
    threads: int | None = None  # serial only: threads computing the shards (default min(cores, shards))
    shift: int | None = None  # augmentation: translate images by up to this many pixels (None: default)
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None  # steps; checkpoints are also written at every epoch end
    resume: str | None = None  # a checkpoint folder to continue from
    init_from: str | None = None  # a --save file or checkpoint whose weights a new run starts from
    log_every: int | None = None  # steps: a "step" line in --metrics every this many optimizer steps
    trace: str | None = None  # write a Chrome trace-event file (Perfetto, chrome://tracing) here
    trace_steps: str | None = None  # FIRST:LAST, the steps --trace records (None: trace.DEFAULT_STEPS)

    def __post_init__(self) -> None:
        # a PATH.py:FUNCTION as an absolute path: what checkpoints record, and what workers import
        if isinstance(self.model, str):
            self.model = canonical(self.model)

    def identity(self) -> dict:
        """The settings with defaults resolved: what a resumed run must share with the checkpointed one."""
        return {**asdict(self), "epochs": self.n_epochs, "shards": self.n_shards, "shift": self.max_shift}

    @property
    def max_shift(self) -> int:
        """Pixels by which an image may be translated (0: no augmentation)."""
        return self.shift if self.shift is not None else DEFAULT_SHIFT.get(self.model, OWN_MODEL["shift"])

    @property
    def n_shards(self) -> int:
        return self.shards if self.shards is not None else DEFAULT_SHARDS.get(self.model, OWN_MODEL["shards"])

    @property
    def trace_range(self) -> tuple[int, int | None]:
        """(first, last or None) of the optimizer steps (1-based) that --trace records."""
        return DEFAULT_STEPS if self.trace_steps is None else parse_steps(self.trace_steps)

    @property
    def n_epochs(self) -> int:
        return self.epochs if self.epochs is not None else DEFAULT_EPOCHS.get(self.model, OWN_MODEL["epochs"])

    def lr_at(self, step: int, steps_per_epoch: int) -> float:
        """The learning rate of optimizer step `step` (0-based): a pure function of the config."""
        return SCHEDULES[self.lr_schedule](self.lr, step, self.n_epochs * steps_per_epoch)

    def check(self) -> Config:
        """Raise ValueError naming the first flag whose value makes this run impossible."""
        check_name(self.model)
        if not self.dataset:  # a path is read by check_data, where the data is: not on every machine
            raise ValueError("--dataset must name a built-in data set or a path, got ''")
        for flag, value in (
            ("--epochs", self.epochs),
            ("--shards", self.shards),
            ("--threads", self.threads),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be a positive integer, got {value}")
        if self.batch_size < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise ValueError(
                f"--batch-size and --max-steps must be positive, got {self.batch_size}, {self.max_steps}"
            )
        if not self.lr > 0:
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(
                f"--lr-schedule must be one of {', '.join(sorted(SCHEDULES))}, got {self.lr_schedule!r}"
            )
        if self.seed < 0 or (self.shift is not None and self.shift < 0):
            raise ValueError(f"--seed and --shift must be 0 or more, got {self.seed}, {self.shift}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"--dtype must be float32 or float64, got {self.dtype!r}")
        if self.checkpoint_every is not None and not self.checkpoint_dir:
            raise ValueError("--checkpoint-every needs --checkpoint-dir")
        if self.log_every is not None and (self.log_every < 1 or not self.metrics):
            raise ValueError(
                f"--log-every must be a positive integer and needs --metrics, got {self.log_every} "
                f"with --metrics {self.metrics}"
            )
        if self.trace_steps is not None:
            if not self.trace:
                raise ValueError("--trace-steps needs --trace")
            try:
                parse_steps(self.trace_steps)
            except ValueError as e:
                raise ValueError(f"--trace-steps {e}") from None
        return self

    def check_model(self) -> None:
        """Raise ValueError (a ModelError) if your own model does not import in this process. Only the
        process that starts a run checks: a worker reports it to the server instead (agreement.py)."""
        check_importable(self.model)

    def check_data(self) -> None:
        """Raise ValueError if the data cannot be trained on, before the run starts: your own data
        set is read and checked, and its path made absolute (workers may start in another folder);
        a folder named by --data-dir or NUMPY_CNN_DATA must hold a built-in set's files, as it is
        the only place looked at."""
        data = datasets.check(self.dataset, self.data_dir, self.max_shift)
        if data is not None:
            self.dataset = data.path
            check_fits(self.model, data)
            return
        given = given_dir(self.data_dir)
        if given is not None:
            try:
                given.check(self.dataset, FILES)
            except DataNotFound as e:
                raise ValueError(str(e)) from None

    def check_paths(self) -> None:
        """Raise ValueError naming the first output path that cannot be written, or a bad --resume.

        Only the process that writes them checks: a worker on another machine has none of these paths.
        """
        for flag, path in (("--save", self.save), ("--metrics", self.metrics), ("--trace", self.trace)):
            check_writable(path, flag)
        if self.checkpoint_dir:
            folder = os.path.abspath(self.checkpoint_dir)
            while not os.path.exists(folder):
                folder = os.path.dirname(folder)
            if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
                raise ValueError(f"--checkpoint-dir {self.checkpoint_dir}: {folder} is not a writable folder")
            resuming_here = self.resume and os.path.abspath(self.resume) == os.path.abspath(
                self.checkpoint_dir
            )
            if checkpoint.has_checkpoints(self.checkpoint_dir) and not resuming_here:
                raise ValueError(
                    f"--checkpoint-dir {self.checkpoint_dir} already holds checkpoints: pass "
                    f"--resume {self.checkpoint_dir} to continue them, or choose another folder"
                )
        if self.init_from and not self.resume:  # resuming, the checkpoint has the weights
            check_init_from(self)
        if self.resume:
            try:
                checkpoint.check_resumable(checkpoint.latest(self.resume).meta, self.identity())
            except checkpoint.CheckpointError as e:
                raise ValueError(f"--resume {self.resume}: {e}") from None


def check_fits(model: str, data: datasets.DataSet) -> None:
    """Raise ValueError if built-in `model` cannot take the data's samples, or has too few outputs."""
    if model not in MODELS:
        return
    shape = input_shape(model)  # fc-net flattens any 784 values; conv-net needs (1, 28, 28)
    if math.prod(shape) != math.prod(data.sample_shape) or (len(shape) > 1 and shape != data.sample_shape):
        raise ValueError(
            f"--dataset {data.path}: samples of shape {data.sample_shape}, but {model} takes {shape}"
        )
    outputs = build(model).forward(np.zeros((1, *shape), np.float32)).shape[1]
    if data.classes > outputs:
        raise ValueError(
            f"--dataset {data.path}: {data.classes} classes (labels up to {data.classes - 1}), but "
            f"{model} has {outputs} outputs"
        )


def check_writable(path: str | None, flag: str) -> None:
    if path is None:
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise ValueError(f"{flag} {path}: folder {directory} does not exist or is not writable")
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path}: is a folder")


def check_init_from(config: Config) -> None:
    """Raise ValueError unless --init-from names weights that fit `config.model`."""
    from .models import build
    from .saved import SavedModelError, load_into

    try:
        data = datasets.load(config.dataset, config.data_dir) if needs_data(config.model) else None
        load_into(build(config.model, dtype=config.dtype, data=data), config.init_from)
    except SavedModelError as e:
        raise ValueError(f"--init-from {e}") from None
