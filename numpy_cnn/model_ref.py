"""Your own model: a reference `PATH.py:FUNCTION` or `package.module:FUNCTION` to a function that
builds a Net, imported where the net is built (every worker imports it again).

The function is called as FUNCTION(rng) with a seeded numpy.random.Generator, plus the keywords
`sample_shape=` (one sample's shape, e.g. (1, 28, 28)) and `classes=` if it takes them. A PATH.py
is recorded as an absolute path, so that a checkpoint resumes from any folder and every worker on
this machine finds the same file; a module is looked up on sys.path, then in the current folder.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from types import ModuleType

from .net import Net

SYNTAX = "PATH.py:FUNCTION or package.module:FUNCTION"


class ModelError(ValueError):
    """A model reference that does not import, or whose function does not build a usable Net."""


def is_reference(name: str) -> bool:
    return ":" in name


def canonical(name: str) -> str:
    """`name` as a run records it: a PATH.py made absolute; anything else as it is."""
    where, sep, function = name.rpartition(":")
    if sep and where.endswith(".py"):
        return f"{os.path.abspath(os.path.expanduser(where))}:{function}"
    return name


def parse(name: str) -> tuple[str, str]:
    """(file or module, function) of reference `name`; ModelError if it is not written as one."""
    where, _, attr = name.rpartition(":")
    if not where or not attr or not all(part.isidentifier() for part in attr.split(".")):
        raise ModelError(f"model {name!r}: expected {SYNTAX}")
    return where, attr


def resolve(name: str) -> Callable:
    """The function `name` refers to; raises ModelError naming the reference and what failed."""
    where, attr = parse(name)
    module = _import_file(name, where) if where.endswith(".py") else _import_module(name, where)
    found: object = module
    for part in attr.split("."):
        if not hasattr(found, part):
            raise ModelError(f"model {name}: {where} has no {attr!r}")
        found = getattr(found, part)
    if not callable(found):
        raise ModelError(f"model {name}: {attr} is a {type(found).__name__}, not a function")
    return found


# PATH.py modules by (path, mtime, size): built once per process, again after the file changes
_files: dict[tuple[str, int, int], ModuleType] = {}


def _import_file(name: str, path: str) -> ModuleType:
    try:
        st = os.stat(path)
    except OSError as e:
        raise ModelError(f"model {name}: cannot read {path}: {e.strerror}") from None
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _files:
        # a module name of its own per file: two model files never replace each other in sys.modules
        module_name = "numpy_cnn_model_" + hashlib.sha256(path.encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # as `import` does: dataclasses and pickle look it up there
        try:
            spec.loader.exec_module(module)
        except BaseException as e:
            del sys.modules[module_name]
            if not isinstance(e, Exception):
                raise
            raise ModelError(f"model {name}: importing {path} failed: {_describe(e)}") from e
        _files[key] = module
    return _files[key]


def _import_module(name: str, module: str) -> ModuleType:
    here = os.getcwd()
    if "" not in sys.path and here not in sys.path:
        # as `python -m` would: a module beside the command's folder is found; last, so it shadows nothing
        sys.path.append(here)
    try:
        return importlib.import_module(module)
    except Exception as e:
        raise ModelError(f"model {name}: importing {module} failed: {_describe(e)}") from e


def call(name: str, function: Callable, rng, sample_shape: tuple[int, ...], classes: int) -> Net:
    """function(rng, sample_shape=..., classes=...), each keyword only if it takes it; the result
    must be a Net."""
    kwargs = {}
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin or extension: no signature to read
        params = {}
    any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, value in (("sample_shape", tuple(sample_shape)), ("classes", int(classes))):
        if any_keyword or (key in params and params[key].kind is not inspect.Parameter.POSITIONAL_ONLY):
            kwargs[key] = value
    try:
        net = function(rng, **kwargs)
    except Exception as e:
        raise ModelError(f"model {name}: building the net failed: {_describe(e)}") from e
    if not isinstance(net, Net):
        raise ModelError(
            f"model {name}: the function returned {type(net).__name__}, not a numpy_cnn.Net "
            "(return Net([...layers]))"
        )
    return net


def _describe(e: BaseException) -> str:
    """The exception and where in the user's code it was raised."""
    frames = traceback.extract_tb(e.__traceback__)
    ours = (os.path.dirname(__file__), os.path.dirname(importlib.__file__), "<frozen ")
    outside = [f for f in frames if not f.filename.startswith(ours)]
    where = f" (at {outside[-1].filename}, line {outside[-1].lineno})" if outside else ""
    if isinstance(e, SyntaxError):
        where = f" (at {e.filename}, line {e.lineno})"
        return f"SyntaxError: {e.msg}{where}"
    return f"{type(e).__name__}: {e}{where}"
