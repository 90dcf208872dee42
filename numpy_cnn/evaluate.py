"""`python -m numpy_cnn.evaluate WEIGHTS.npz`: a saved model's test accuracy, its accuracy per class
and the confusion matrix (rows: the true class, columns: the predicted one).

WEIGHTS.npz is a --save file or a checkpoint: either says which model it holds and what it was
trained on; a --save file from before that metadata needs --model."""

from __future__ import annotations

import json
import sys

import numpy as np

from .cli import Parser
from .data import DataError, load, to_float
from .data.mnist import DataNotFound, IDXError
from .model_ref import SYNTAX, canonical
from .models import MODELS, input_shape
from .net import Net
from .saved import SavedModelError, load_model


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
    parser.add_argument("weights", metavar="WEIGHTS.npz", help="a file written by --save, or a checkpoint")
    parser.add_argument(
        "--model",
        type=canonical,
        default=None,
        help=f"the model the weights are for: {' or '.join(sorted(MODELS))}, or your own as {SYNTAX} "
        "(default: the one the file names)",
    )
    parser.add_argument(
        "--dataset",
        metavar="NAME|PATH",
        default=None,
        help="the test set to use: a built-in name or your own data set, as for training (default: "
        "the one the model was trained on, else mnist)",
    )
    parser.add_argument(
        "--data-dir", default=None, help="as for training (default: $NUMPY_CNN_DATA, the cache)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object instead")
    args = parser.parse_args(argv)
    try:
        net, saved = load_model(args.weights, args.model)
    except SavedModelError as e:  # a missing, damaged or other model's file, or one that needs --model
        parser.error(str(e))
    dataset = args.dataset or saved.meta.get("dataset") or "mnist"
    try:
        test = load(dataset, args.data_dir).test
    except (DataNotFound, IDXError, OSError, DataError) as e:
        print(f"python -m numpy_cnn.evaluate: error: {e}", file=sys.stderr)
        return 1
    shape = tuple(saved.meta.get("sample_shape") or input_shape(args.model or saved.model))
    result = report(confusion(net, test.images, test.labels, shape, saved.meta.get("classes", 10)))
    print(json.dumps(result) if args.json else format_report(result, args.weights))
    return 0


if __name__ == "__main__":
    sys.exit(main())
