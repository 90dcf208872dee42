"""Training throughput: serial numpy_cnn, `launch --workers N`, and PyTorch, measured in one run.

    python benchmarks/speed.py --model conv-net --steps 300 --repeats 3

Each mode runs as its own process, exactly as a user runs it (`python -m numpy_cnn.train`,
`python -m launch`), for --steps optimizer steps; the modes take turns in every repeat, so a noisy
neighbour slows all of them alike. The table gives medians over the repeats and ratios against the
serial run of this same invocation. Throughput counts training steps only (no start-up, no
evaluation); the distributed rows also split a step into compute, communication and server update.

Where PyTorch is importable (a separate venv: `pip install torch==2.13.0`; it is never a
dependency), the same invocation also runs benchmarks/torch_reference.py with 2 threads, 1 thread,
and DDP over gloo with 2 processes x 1 thread, and prints the speed issue's ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

NUMPY_MODES = ["serial", "serial-1x4", "workers-1", "workers-2", "workers-4"]
TORCH_MODES = ["torch-2", "torch-1", "ddp-2"]
TRAIN_SAMPLES = 60000
HERE = os.path.dirname(os.path.abspath(__file__))


def command(
    mode: str,
    model: str,
    steps: int,
    metrics: str,
    extra: list[str],
    torch_python: str = sys.executable,
    other_python: str | None = None,
) -> list[str]:
    common = [model, "--max-steps", str(steps), "--epochs", "1", "--metrics", metrics, *extra]
    if mode.endswith("@other"):  # the same mode with another install (e.g. the code before a change)
        if other_python is None:
            raise ValueError(f"mode {mode} needs --other-python")
        cmd = command(mode.removesuffix("@other"), model, steps, metrics, extra, torch_python)
        return [other_python if c == sys.executable else c for c in cmd]
    if mode == "serial":
        return [sys.executable, "-m", "numpy_cnn.train", *common]
    if mode == "serial-1x4":  # the work of 1 worker (4 micro-shards) on one thread: its yardstick
        return [sys.executable, "-m", "numpy_cnn.train", "--threads", "1", "--shards", "4", *common]
    if mode.startswith("workers-"):  # workers-N[-tcp][-stream|-one]: -tcp: over CURVE TCP; --buckets
        _, n, *options = mode.split("-")
        flags = {
            "tcp": ["--local-transport", "tcp"],
            "stream": ["--buckets", "stream"],
            "one": ["--buckets", "one"],
        }
        if any(o not in flags for o in options):
            raise ValueError(f"unknown mode {mode}")
        return [
            sys.executable,
            "-m",
            "numpy_cnn.launch",
            "--workers",
            n,
            *(f for o in options for f in flags[o]),
            *common,
        ]
    if mode.startswith(("torch-", "ddp-")):
        flag = "--threads" if mode.startswith("torch-") else "--ddp"
        script = os.path.join(HERE, "torch_reference.py")
        return [
            torch_python,
            script,
            "--model",
            model,
            "--steps",
            str(steps),
            flag,
            mode.split("-")[1],
            *extra,
        ]
    if mode.startswith("single-"):
        return [
            sys.executable,
            "-m",
            "numpy_cnn.launch",
            "--single-process",
            "--workers",
            mode.split("-")[1],
            *common,
        ]
    raise ValueError(f"unknown mode {mode!r}")


def run_once(
    mode: str, model: str, steps: int, extra: list[str], torch_python: str, other_python: str | None = None
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        metrics = os.path.join(tmp, "m.jsonl")
        start = time.perf_counter()
        result = subprocess.run(
            command(mode, model, steps, metrics, extra, torch_python, other_python),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=3600,
            # not in a checkout: `python -m numpy_cnn...` would import that folder's numpy_cnn,
            # whichever install runs it (an @other mode would mix two versions)
            cwd=tmp,
        )
        wall = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"{mode} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        if mode.startswith(("torch-", "ddp-")) and not mode.endswith("@other"):
            record = json.loads(result.stdout.strip().splitlines()[-1])
        else:
            with open(metrics, encoding="utf-8") as f:
                (record,) = [r for r in map(json.loads, f) if r.get("type") == "epoch"]
    record["wall_s"] = wall
    rss = [int(m) for m in re.findall(r"peak resident memory (\d+) MB", result.stdout)]
    if rss:
        record["worker_rss_mb"] = max(rss)
    return record


def blas_info() -> str:
    from threadpoolctl import threadpool_info

    libs = [(i["internal_api"], i["num_threads"], i.get("architecture")) for i in threadpool_info()]
    settings = ", ".join(
        f"{k}={os.environ.get(k, '(unset)')}" for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    )
    return f"BLAS {libs}; {settings}; {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="conv-net", choices=["conv-net", "fc-net"])
    parser.add_argument(
        "--steps", type=int, default=300, help="optimizer steps per run (default: %(default)s)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode; medians are reported")
    parser.add_argument(
        "--torch-python",
        default=sys.executable,
        help="the Python that runs the torch modes (one with torch and numpy_cnn installed; "
        "default: this one)",
    )
    parser.add_argument(
        "--other-python",
        default=None,
        help="the Python of another install of numpy_cnn (say, a worktree of the code before a change): "
        "a mode written MODE@other runs with it, in turn with the others",
    )
    have_torch = importlib.util.find_spec("torch") is not None
    parser.add_argument(
        "--modes",
        default=",".join(NUMPY_MODES + (TORCH_MODES if have_torch else [])),
        help="comma-separated: serial, workers-N (-tcp: over CURVE TCP, not ipc; -stream or -one: "
        "that --buckets, e.g. workers-2-stream), single-N, torch-THREADS, ddp-N, and MODE@other "
        "(default: %(default)s)",
    )
    parser.add_argument("--data-dir", default=None, help="passed on to every run")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write every record here")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    extra = ["--data-dir", args.data_dir] if args.data_dir else []
    print(blas_info())
    print(
        f"model {args.model}, {args.steps} steps of batch 64 per run, {args.repeats} repeats, modes {modes}"
    )
    records: dict[str, list[dict]] = {m: [] for m in modes}
    for r in range(args.repeats):
        for mode in modes:
            records[mode].append(
                run_once(mode, args.model, args.steps, extra, args.torch_python, args.other_python)
            )
            print(f"  repeat {r + 1} {mode}: {records[mode][-1]['samples_per_s']} samples/s", flush=True)

    def median(mode: str, key: str) -> float:
        return statistics.median(rec[key] for rec in records[mode])

    base = median(modes[0], "samples_per_s")
    print()
    print(
        f"| mode | samples/s | s/epoch | vs {modes[0]} | step ms | compute | comm | update | exposed "
        "| MB/step |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode in modes:
        sps = median(mode, "samples_per_s")
        row = [mode, f"{sps:.0f}", f"{TRAIN_SAMPLES / sps:.2f}", f"{sps / base:.2f}"]
        if "step_ms" in records[mode][0]:
            row += [f"{median(mode, k):.2f}" for k in ("step_ms", "compute_ms", "comm_ms", "update_ms")]
            exposed = records[mode][0].get("exposed_comm_ms") is not None
            row.append(f"{median(mode, 'exposed_comm_ms'):.2f}" if exposed else "")
            row.append(f"{median(mode, 'bytes_per_step') / 1e6:.2f}")
        else:
            row += [f"{64000 / sps:.2f}", "", "", "", ""]
            row.append("0" if not mode.startswith(("torch", "ddp")) else "")
        print("| " + " | ".join(row) + " |")
    print()
    for mode in modes:  # this install against the other, mode by mode
        if f"{mode}@other" in modes:
            ratio = median(mode, "samples_per_s") / median(f"{mode}@other", "samples_per_s")
            print(f"- {mode}: {ratio:.2f}x the samples/s of {mode}@other")
    report_buckets(modes, records)
    report_targets(modes, median, args.model)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"model": args.model, "steps": args.steps, "records": records}, f, indent=1)
    return 0


def report_buckets(modes: list[str], records: dict[str, list[dict]]) -> None:
    """Per bucket (the last layers' first): when the slowest worker had its gradient ready, when the
    server had all of it, when the server sent its update to the workers, and when the last worker
    took that update, in ms after the step's start (medians over steps, then over the repeats; a
    worker takes the updates that arrive while it computes when its job ends)."""
    rows = [m for m in modes if records[m] and "bucket_ready_ms" in records[m][0]]
    if not rows:
        return
    print(
        "| mode | bucket | gradient ready, ms | at the server, ms | update sent, ms "
        "| update taken, ms | step ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")

    def at(recs: list[dict], key: str, b: int) -> str:
        values = [r[key][b] for r in recs if key in r]  # older installs (@other) lack some
        return f"{statistics.median(values):.2f}" if values else "-"

    for mode in rows:
        recs = records[mode]
        step = statistics.median(r["step_ms"] for r in recs)
        for b in range(len(recs[0]["bucket_ready_ms"])):
            times = [
                at(recs, k, b)
                for k in ("bucket_ready_ms", "bucket_in_ms", "bucket_sent_ms", "bucket_taken_ms")
            ]
            print(f"| {mode} | {b} | {' | '.join(times)} | {step:.2f} |")
    print()


def records_have(modes: list[str], median, mode: str) -> bool:
    try:
        return median(mode, "exposed_comm_ms") is not None
    except (KeyError, TypeError):
        return False


def report_targets(modes: list[str], median, model: str) -> None:
    """The speed issue's targets, as ratios of medians from this one run."""

    def sps(mode: str) -> float | None:
        return median(mode, "samples_per_s") if mode in modes else None

    def line(name: str, value: float | None, target: str, ok) -> None:
        if value is None:
            print(f"- {name}: not measured (mode missing)")
        else:
            print(f"- {name}: {value:.2f} (target {target}) {'met' if ok(value) else 'MISSED'}")

    serial, torch2, ddp = sps("serial"), sps("torch-2"), sps("ddp-2")
    w1, w2, serial14 = sps("workers-1"), sps("workers-2"), sps("serial-1x4")
    limit = 1.5 if model == "conv-net" else 0.8
    line(
        f"serial {model} epoch time / PyTorch 2 threads",
        torch2 / serial if serial and torch2 else None,
        f"<= {limit}",
        lambda v: v <= limit,
    )
    line(
        "--workers 2 epoch time / PyTorch DDP 2x1",
        ddp / w2 if w2 and ddp else None,
        "<= 1.0",
        lambda v: v <= 1.0,
    )
    line(
        "--workers 1 / serial --threads 1 --shards 4 samples/s",
        w1 / serial14 if w1 and serial14 else None,
        ">= 0.92",
        lambda v: v >= 0.92,
    )
    line(
        "--workers 2 / PyTorch DDP 2x1 samples/s",
        w2 / ddp if w2 and ddp else None,
        ">= 1.1",
        lambda v: v >= 1.1,
    )
    line(
        "--workers 2 / serial samples/s", w2 / serial if w2 and serial else None, ">= 1.0", lambda v: v >= 1.0
    )
    line("--workers 2 / --workers 1 samples/s", w2 / w1 if w1 and w2 else None, ">= 1.7", lambda v: v >= 1.7)
    if "workers-2" in modes and records_have(modes, median, "workers-2"):
        share = median("workers-2", "exposed_comm_ms") / median("workers-2", "step_ms")
        line("exposed communication share of a step at 2 workers", share, "<= 0.10", lambda v: v <= 0.10)
    if "workers-4" in modes:
        share = (median("workers-4", "comm_ms") + median("workers-4", "update_ms")) / median(
            "workers-4", "step_ms"
        )
        line(
            "server update + communication share of a step at 4 workers",
            share,
            "<= 0.10",
            lambda v: v <= 0.10,
        )
    rss = [median(m, "worker_rss_mb") for m in modes if m.startswith("workers-")]
    line("peak resident memory of one worker, MB", max(rss) if rss else None, "<= 150", lambda v: v <= 150)


if __name__ == "__main__":
    sys.exit(main())
