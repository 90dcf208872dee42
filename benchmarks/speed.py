"""Training throughput: serial numpy_cnn against `launch --workers N`, measured in one run.

    python benchmarks/speed.py --model conv-net --steps 300 --repeats 3

Each mode runs as its own process, exactly as a user runs it (`python -m numpy_cnn.train`,
`python -m launch`), for --steps optimizer steps; the modes take turns in every repeat, so a noisy
neighbour slows all of them alike. The table gives medians over the repeats and ratios against the
serial run of this same invocation. Throughput counts training steps only (no start-up, no
evaluation); the distributed rows also split a step into compute, communication and server update.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

MODES = ["serial", "workers-1", "workers-2", "workers-4"]
TRAIN_SAMPLES = 60000


def command(mode: str, model: str, steps: int, metrics: str, extra: list[str]) -> list[str]:
    common = [model, "--max-steps", str(steps), "--epochs", "1", "--metrics", metrics, *extra]
    if mode == "serial":
        return [sys.executable, "-m", "numpy_cnn.train", *common]
    if mode.startswith("workers-"):
        return [sys.executable, "-m", "launch", "--workers", mode.split("-")[1], *common]
    if mode.startswith("single-"):
        return [sys.executable, "-m", "launch", "--single-process", "--workers", mode.split("-")[1], *common]
    raise ValueError(f"unknown mode {mode!r}")


def run_once(mode: str, model: str, steps: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        metrics = os.path.join(tmp, "m.jsonl")
        start = time.perf_counter()
        result = subprocess.run(
            command(mode, model, steps, metrics, extra),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=3600,
        )
        wall = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"{mode} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        with open(metrics, encoding="utf-8") as f:
            (record,) = [json.loads(line) for line in f]
    record["wall_s"] = wall
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
        "--modes",
        default=",".join(MODES),
        help="comma-separated: serial, workers-N, single-N (default: %(default)s)",
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
            records[mode].append(run_once(mode, args.model, args.steps, extra))
            print(f"  repeat {r + 1} {mode}: {records[mode][-1]['samples_per_s']} samples/s", flush=True)

    def median(mode: str, key: str) -> float:
        return statistics.median(rec[key] for rec in records[mode])

    base = median(modes[0], "samples_per_s")
    print()
    print(f"| mode | samples/s | s/epoch | vs {modes[0]} | step ms | compute | comm | update | MB/step |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode in modes:
        sps = median(mode, "samples_per_s")
        row = [mode, f"{sps:.0f}", f"{TRAIN_SAMPLES / sps:.2f}", f"{sps / base:.2f}"]
        if "step_ms" in records[mode][0]:
            row += [f"{median(mode, k):.2f}" for k in ("step_ms", "compute_ms", "comm_ms", "update_ms")]
            row.append(f"{median(mode, 'bytes_per_step') / 1e6:.2f}")
        else:
            row += [f"{64000 / sps:.2f}", "", "", "", "0"]
        print("| " + " | ".join(row) + " |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"model": args.model, "steps": args.steps, "records": records}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
