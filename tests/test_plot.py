"""python -m numpy_cnn.plot: a picture of the requested size from metrics files, and its errors."""

from __future__ import annotations

import json
import struct
import sys

import pytest

from numpy_cnn.plot import main


def png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def write(path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def serial_run(path) -> str:
    steps = [
        {"type": "step", "step": s, "epoch": 1, "steps": 5, "loss": 2 / s, "train_acc": 0.5} for s in (5, 10)
    ]
    epoch = {"type": "epoch", "epoch": 1, "step": 10, "loss": 0.3, "train_acc": 0.6, "test_acc": 0.7}
    return write(path, [{"type": "config", "model": "fc-net", "start_step": 0}, *steps, epoch])


def launch_run(path) -> str:  # epoch lines only, with the split of a step
    split = {"step_ms": 20, "compute_ms": 12, "comm_ms": 7, "update_ms": 1, "exposed_comm_ms": 5}
    epochs = [
        {
            "type": "epoch",
            "epoch": e,
            "step": 10 * e,
            "loss": 1 / e,
            "train_acc": 0.5,
            "test_acc": 0.6,
            **split,
        }
        for e in (1, 2)
    ]
    return write(path, [{"type": "config", "model": "conv-net", "workers": 2, "start_step": 0}, *epochs])


def test_writes_a_png_of_the_requested_size(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "curves.png"
    assert main([serial_run(tmp_path / "a.jsonl"), "-o", str(out), "--width", "640", "--height", "480"]) == 0
    assert png_size(out) == (640, 480)
    assert f"wrote {out} (640x480 px) from 1 run" in capsys.readouterr().out


def test_a_launch_run_adds_the_split_panel_to_the_default_height(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "c.png"
    runs = [serial_run(tmp_path / "a.jsonl"), launch_run(tmp_path / "b.jsonl")]
    assert main([*runs, "-o", str(out), "--label", "serial", "--label", "2 workers", "--title", "t"]) == 0
    assert png_size(out) == (1000, 3 * 360)
    assert main([runs[0], "-o", str(out)]) == 0
    assert png_size(out) == (1000, 2 * 360)  # no launch run: loss and accuracy only


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: str(p / "missing.jsonl"), "missing.jsonl: no such file"),
        (lambda p: write(p / "e.jsonl", [{"type": "config"}]), "e.jsonl: no epoch or step records"),
        (
            lambda p: (p / "x.jsonl").write_text('{"type": "config"}\n{oops\n') and str(p / "x.jsonl"),
            "x.jsonl, line 2",
        ),
    ],
)
def test_an_unreadable_file_exits_1_naming_it(tmp_path, capsys, make, message):
    pytest.importorskip("matplotlib")
    assert main([make(tmp_path), "-o", str(tmp_path / "c.png")]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--label", "a", "--label", "b"], "--label given 2 times for 1 files"),
        (["--width", "0"], "--width: must be a positive integer"),
        (["-o", "/nonexistent/c.png"], "-o /nonexistent/c.png: folder /nonexistent does not exist"),
    ],
)
def test_bad_flags_exit_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main([serial_run(tmp_path / "a.jsonl"), *args])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_without_matplotlib_it_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert main([serial_run(tmp_path / "a.jsonl"), "-o", str(tmp_path / "c.png")]) == 1
    assert "pip install 'numpy_cnn[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()
