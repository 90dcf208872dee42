"""The layout is the architecture: no import circles, the library never imports the trainer's
processes, and each file is importable under one name only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# installed package name -> the repository folder it is mapped from (pyproject.toml)
PACKAGES = {
    "numpy_cnn": ROOT / "numpy_cnn",
    "numpy_cnn.distributed": ROOT / "distributed",
    "numpy_cnn.launch": ROOT / "launch",
}


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules that `name` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def test_no_import_circles(graph):
    def parents(name):  # importing a.b.c runs a/__init__ and a/b/__init__ first
        parts = name.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts))} & set(graph)

    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for other in sorted(graph[name] - parents(name)):
            if state.get(other) == "open":
                pytest.fail("import circle: " + " -> ".join(path[path.index(other) :] + [other]))
            if other not in state:
                visit(other, path + [other])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_library_knows_nothing_of_processes_or_the_command(graph):
    for name, deps in graph.items():
        if name.startswith(("numpy_cnn.distributed", "numpy_cnn.launch")):
            continue
        bad = {d for d in deps if d.startswith(("numpy_cnn.distributed", "numpy_cnn.launch"))}
        assert not bad, f"{name} imports {bad}"
    for name, deps in graph.items():
        if name.startswith("numpy_cnn.distributed"):
            assert not any(d.startswith("numpy_cnn.launch") for d in deps), name


def test_modules_stay_small():
    too_long = {n: len(p.read_text().splitlines()) for n, p in modules().items()}
    assert not {n: k for n, k in too_long.items() if k > 450}, "split these modules"


def test_python_m_numpy_cnn_train_loads_the_loop_once():
    # run as __main__, numpy_cnn/train.py must not be imported a second time as numpy_cnn.train
    r = subprocess.run(
        [sys.executable, "-v", "-m", "numpy_cnn.train", "--help"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage: python -m numpy_cnn.train" in r.stdout
    assert "import 'numpy_cnn.train'" not in r.stderr


def test_the_folders_install_under_numpy_cnn_only():
    import numpy_cnn.distributed
    import numpy_cnn.launch

    assert Path(numpy_cnn.distributed.__file__).parent == ROOT / "distributed"
    assert Path(numpy_cnn.launch.__file__).parent == ROOT / "launch"
    # run from elsewhere: the bare names are not this project's (they are Dask's and ROS 2's)
    code = "import importlib.util as u; print(u.find_spec('distributed'), u.find_spec('launch'))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=60)
    assert str(ROOT) not in r.stdout, r.stdout


def test_every_package_folder_is_installed():
    """pyproject lists the packages by hand (the folders are mapped): a new subpackage must be added."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert folders <= listed, f"add {sorted(folders - listed)} to [tool.setuptools] packages"
