"""`python -m numpy_cnn.evaluate WEIGHTS.npz --model MODEL`: a saved model's test accuracy, its
accuracy per class and the confusion matrix (rows: the true class, columns: the predicted one)."""

from __future__ import annotations

import json
import sys

import numpy as np

from .cli import Parser
from .data import load, to_float
from .data.mnist import DATASETS, DataNotFound, IDXError
from .models import MODELS, build, input_shape
from .net import Net


def confusion(
    net: Net, images: np.ndarray, labels: np.ndarray, shape: tuple[int, ...], classes: int
) -> np.ndarray:
    """(classes, classes) counts: [t, p] is how many samples of class t the net calls p."""
    predicted = net.predict(to_float(images, shape)).argmax(axis=1)
    return np.bincount(labels * classes + predicted, minlength=classes * classes).reshape(classes, classes)


def report(matrix: np.ndarray) -> dict:
    per_class = np.diag(matrix) / np.maximum(matrix.sum(axis=1), 1)
    return {
        "samples": int(matrix.sum()),
        "accuracy": round(float(np.trace(matrix) / max(matrix.sum(), 1)), 6),
        "per_class": [round(float(a), 6) for a in per_class],
        "confusion": matrix.tolist(),
    }


def format_report(result: dict, source: str) -> str:
    matrix = np.array(result["confusion"])
    width = max(5, len(str(matrix.max())) + 1)
    lines = [
        f"{source}: test accuracy {100 * result['accuracy']:.2f}% on {result['samples']} samples",
        "per class: " + "  ".join(f"{k} {100 * a:.2f}%" for k, a in enumerate(result["per_class"])),
        "confusion matrix (rows: true class, columns: predicted):",
        " " * 6 + "".join(f"{k:>{width}}" for k in range(len(matrix))),
    ]
    lines += [f"{t:>6}" + "".join(f"{c:>{width}}" for c in row) for t, row in enumerate(matrix)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(
        prog="python -m numpy_cnn.evaluate", description=__doc__.splitlines()[0].split(": ", 1)[1]
    )
    parser.add_argument("weights", metavar="WEIGHTS.npz", help="a file written by --save")
    parser.add_argument(
        "--model", choices=sorted(MODELS), required=True, help="the model the weights are for"
    )
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="mnist", help="(default: %(default)s)")
    parser.add_argument(
        "--data-dir", default=None, help="as for training (default: $NUMPY_CNN_DATA, the cache)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object instead")
    args = parser.parse_args(argv)
    net = build(args.model)
    try:
        net.load(args.weights)
    except (OSError, ValueError, KeyError) as e:  # a missing, damaged or other model's file
        parser.error(f"{args.weights}: cannot load it as {args.model} weights: {e}")
    try:
        test = load(args.dataset, args.data_dir).test
    except (DataNotFound, IDXError, OSError) as e:
        print(f"python -m numpy_cnn.evaluate: error: {e}", file=sys.stderr)
        return 1
    result = report(confusion(net, test.images, test.labels, input_shape(args.model), 10))
    print(json.dumps(result) if args.json else format_report(result, args.weights))
    return 0


if __name__ == "__main__":
    sys.exit(main())
