"""`python -m numpy_cnn.plot run.jsonl [other.jsonl ...] -o curves.png`: training curves from
--metrics files.

It draws the loss and the train and test accuracy against the optimizer step (from the step lines
of --log-every where a file has them, from its epoch lines otherwise), every run overlaid in its
own colour, and, when a file comes from `launch`, where a step's time went in each epoch (compute,
communication, update). matplotlib is an optional extra (`pip install 'numpy_cnn[plot]'`); it
draws without a display (the Agg backend). Exit status: 0 done, 1 a file that cannot be read or
written or no matplotlib, 2 a bad flag.
"""

from __future__ import annotations

import argparse
import sys

from .cli import Parser, positive_int
from .config import check_writable
from .records import MetricsError, Run, read_run

HINT = (
    "drawing needs matplotlib, an optional extra of numpy_cnn: pip install 'numpy_cnn[plot]' "
    "(in a checkout: pip install -e '.[plot]'), or pip install matplotlib"
)
SPLIT = (("compute_ms", "compute"), ("comm_ms", "communication"), ("update_ms", "update"))
PANEL_PX = 360  # default height per panel


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m numpy_cnn.plot",
        description="Draw the loss and train/test accuracy of one or more --metrics files, overlaid, "
        "and for launch runs the split of a step (compute, communication, update) per epoch.",
        epilog="exit status: 0 written, 1 a file that cannot be read or written (or no matplotlib), "
        "2 a bad flag",
    )
    parser.add_argument("files", nargs="+", metavar="METRICS.jsonl", help="--metrics files of runs")
    parser.add_argument(
        "-o",
        "--output",
        default="curves.png",
        metavar="PATH",
        help="the picture; its suffix picks the format: .png, .svg, .pdf (default: %(default)s)",
    )
    parser.add_argument("--width", type=positive_int, default=1000, help="in pixels (default: %(default)s)")
    parser.add_argument(
        "--height",
        type=positive_int,
        default=None,
        help=f"in pixels (default: {PANEL_PX} per panel: loss, accuracy and, for launch runs, the split)",
    )
    parser.add_argument(
        "--label",
        action="append",
        default=None,
        help="a run's name in the legend, once per file in order (default: the file's name, the "
        "model, and serial or the number of workers)",
    )
    parser.add_argument("--title", default=None, help="a title above the panels")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.label is not None and len(args.label) != len(args.files):
        parser.error(f"--label given {len(args.label)} times for {len(args.files)} files")
    try:
        check_writable(args.output, "-o")
    except ValueError as e:
        parser.error(str(e))
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed, none opened
        from matplotlib import pyplot
    except ImportError:
        print(f"plot: error: {HINT}", file=sys.stderr)
        return 1
    try:
        runs = [read_run(path) for path in args.files]
    except MetricsError as e:
        print(f"plot: error: {e}", file=sys.stderr)
        return 1
    labels = args.label or [run.label() for run in runs]
    colors = [f"C{i % 10}" for i in range(len(runs))]  # matplotlib's default cycle
    split = [(run, label, color) for run, label, color in zip(runs, labels, colors) if run.split_epochs]
    panels = 3 if split else 2
    height = args.height or PANEL_PX * panels
    dpi = 100
    figure = pyplot.figure(figsize=(args.width / dpi, height / dpi), dpi=dpi)
    axes = figure.subplots(panels, 1, squeeze=False)[:, 0]
    for run, label, color in zip(runs, labels, colors):
        draw_curves(axes[0], axes[1], run, label, color)
    finish_curves(axes[0], axes[1])
    if split:
        draw_split(axes[2], split)
    if args.title:
        figure.suptitle(args.title)
    figure.tight_layout()  # moves the panels inside the figure; its size stays
    try:
        figure.savefig(args.output, dpi=dpi)
    except (OSError, ValueError) as e:  # ValueError: a suffix matplotlib cannot write
        print(f"plot: error: -o {args.output}: {e}", file=sys.stderr)
        return 1
    finally:
        pyplot.close(figure)
    print(
        f"wrote {args.output} ({args.width}x{height} px) from {len(runs)} run{'s' if len(runs) > 1 else ''}"
    )
    return 0


def draw_curves(loss_ax, acc_ax, run: Run, label: str, color: str) -> None:
    """Loss and train accuracy per step line (or per epoch), test accuracy per epoch."""
    train = run.steps or run.epochs
    marker = None if run.steps else "o"  # a line per step needs no markers; a few epochs do
    steps = [r["step"] for r in train]
    loss_ax.plot(steps, [r["loss"] for r in train], color=color, marker=marker, ms=4, label=label)
    acc_ax.plot(
        steps,
        [100 * r["train_acc"] for r in train],
        color=color,
        marker=marker,
        ms=4,
        ls="--",
        alpha=0.8,
        label=f"{label}: train",
    )
    if run.epochs:
        acc_ax.plot(
            [r["step"] for r in run.epochs],
            [100 * r["test_acc"] for r in run.epochs],
            color=color,
            marker="o",
            ms=5,
            label=f"{label}: test",
        )


def finish_curves(loss_ax, acc_ax) -> None:
    loss_ax.set_ylabel("training loss")
    if all(y > 0 for line in loss_ax.get_lines() for y in line.get_ydata()):
        loss_ax.set_yscale("log")  # the first steps' loss would flatten the rest
        loss_ax.yaxis.set_major_formatter(lambda value, _: f"{value:g}")  # 0.1, not 10^-1
        loss_ax.yaxis.set_minor_formatter(lambda value, _: f"{value:g}" if str(value)[0] in "25" else "")
    acc_ax.set_ylabel("accuracy (%)")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("optimizer step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")


def draw_split(ax, runs: list[tuple[Run, str, str]]) -> None:
    """Per epoch, one stacked bar per launch run: the mean step's compute, communication, update."""
    width = 0.8 / len(runs)
    fills = ("#4c72b0", "#dd8452", "#55a868")
    for i, (run, label, color) in enumerate(runs):
        epochs = run.split_epochs
        x = [r["epoch"] - 0.4 + width * (i + 0.5) for r in epochs]
        bottom = [0.0] * len(epochs)
        for (key, name), fill in zip(SPLIT, fills):
            values = [r[key] for r in epochs]
            ax.bar(
                x,
                values,
                width,
                bottom=bottom,
                color=fill,
                edgecolor=color,
                linewidth=1.5,
                label=name if i == 0 else None,
            )
            bottom = [b + v for b, v in zip(bottom, values)]
        if len(runs) > 1:  # which bar is whose: the run's colour around it, and its name in the legend
            ax.bar([], [], color="white", edgecolor=color, linewidth=1.5, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean step (ms)")
    ax.set_xticks(sorted({r["epoch"] for run, _, _ in runs for r in run.split_epochs}))
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")


if __name__ == "__main__":
    sys.exit(main())
