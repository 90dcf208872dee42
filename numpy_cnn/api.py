"""The Python API of serial training: `fit(model, **options)` trains in this process, from a script
or a notebook, and returns the net and one record per epoch. Its options are the command line's
flags as keywords, checked as the command line checks them. numpy_cnn.launch.api.fit is its
data-parallel twin, with the options of `launch`.

    from numpy_cnn.api import fit
    net, history = fit("conv-net", max_steps=200, save="weights.npz")
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from .config import Config
from .models import register
from .net import Net
from .train import train


def config_for(model: str | Callable[..., Net], config_type: type[Config] = Config, **options) -> Config:
    """A checked `config_type` for `model` (a name, a reference, or a function, registered under its
    name in this process) and `options`: raises TypeError for an unknown option, ValueError for a
    value the command line would refuse."""
    if callable(model):
        model = register(model)
    elif not isinstance(model, str):
        raise TypeError(
            f"model must be a name, 'PATH.py:FUNCTION', 'module:FUNCTION' or a function, not {model!r}"
        )
    known = set(config_type.__dataclass_fields__) - {"model"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown option {', '.join(unknown)}; the options are {', '.join(sorted(known))}")
    config = config_type(model, **options)
    config.check_data()
    config.check_paths()
    config.check()
    config.check_model()
    return config


def show_progress() -> bool:
    """A progress bar on a terminal, or in a notebook (where tqdm.auto draws it as a widget)."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def fit(
    model: str | Callable[..., Net],
    *,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
    **options,
) -> tuple[Net, list[dict]]:
    """Train `model` serially, as `python -m numpy_cnn.train` does with the same flags (the same
    weights, bit for bit); returns the trained net and one record per epoch.

    `model`: "conv-net", "fc-net", "PATH.py:FUNCTION", "package.module:FUNCTION", or any function
    taking a seeded numpy Generator (and, if it likes, sample_shape= and classes=) that returns a Net.
    `options`: the flags as keywords, e.g. epochs=2, max_steps=100, seed=1, shards=4, save="w.npz".
    `progress`: draw a bar (default: on a terminal or in a notebook); `log`: where the epoch lines go.
    """
    config = config_for(model, **options)
    return train(config, progress=show_progress() if progress is None else progress, log=log)
