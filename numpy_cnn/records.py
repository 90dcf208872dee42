"""Reading a --metrics file back: its settings, epoch lines and step lines, checked line by line.

A resumed run appends to the file it resumes: another config line (with its "start_step"), then
its own records, which begin again after the checkpoint's step. Reading keeps the history as the
finished run saw it: each config line drops the earlier records past its start_step (the steps
after the checkpoint that the interrupted run had done, and the resumed run did again, with the
same bits). Its first step line may then cover fewer steps than --log-every ("steps" says how many).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

KINDS = ("config", "epoch", "step")
SPLIT = ("compute_ms", "comm_ms", "update_ms")
NEEDS = {  # the keys each kind of record must have, with numbers for values
    "epoch": ("epoch", "step", "loss", "train_acc", "test_acc"),
    "step": ("step", "loss", "train_acc"),
}


class MetricsError(ValueError):
    """A metrics file that cannot be read; the message names the file and, if one, the line."""


@dataclass
class Run:
    path: str
    config: dict = field(default_factory=dict)  # the newest config line
    epochs: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)

    @property
    def split_epochs(self) -> list[dict]:
        """The epoch lines that split a step into compute_ms, comm_ms and update_ms (`launch`'s)."""
        return [r for r in self.epochs if all(isinstance(r.get(k), (int, float)) for k in SPLIT)]

    def label(self) -> str:
        """The file's name and, from its config line, the model and how it was trained."""
        name = os.path.splitext(os.path.basename(self.path))[0]
        model = self.config.get("model")
        if model is None:
            return name
        how = f"{self.config['workers']} workers" if "workers" in self.config else "serial"
        return f"{name} ({model}, {how})"


def read_run(path: str) -> Run:
    """The records of metrics file `path`; raises MetricsError naming the file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except FileNotFoundError:
        raise MetricsError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise MetricsError(f"{path}: is a folder, not a metrics file") from None
    except UnicodeDecodeError:
        raise MetricsError(f"{path}: not a text file (a --metrics file is JSON lines)") from None
    except OSError as e:
        raise MetricsError(f"{path}: {e.strerror or e}") from None
    run = Run(path)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = _parse(path, number, line)
        kind = record["type"]
        if kind == "config":
            start = record.get("start_step")
            start = start if isinstance(start, int) else 0
            run.config = record
            run.epochs = [r for r in run.epochs if r["step"] <= start]
            run.steps = [r for r in run.steps if r["step"] <= start]
        elif kind in NEEDS:
            (run.epochs if kind == "epoch" else run.steps).append(record)
    if not run.epochs and not run.steps:
        raise MetricsError(
            f"{path}: no epoch or step records (a run writes its first at the end of its first epoch, "
            "or with --log-every N after N steps)"
        )
    return run


def _parse(path: str, number: int, line: str) -> dict:
    where = f"{path}, line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise MetricsError(
            f"{where}: not JSON ({e.msg}); a --metrics file has one JSON object a line"
        ) from None
    if not isinstance(record, dict) or record.get("type") not in KINDS:
        raise MetricsError(
            f'{where}: not a metrics record (an object whose "type" is one of {", ".join(KINDS)})'
        )
    for key in NEEDS.get(record["type"], ()):
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):  # NaN: a run that diverged
            raise MetricsError(f'{where}: a {record["type"]} record needs a number "{key}", got {value!r}')
    return record
