"""Per-layer forward/backward time of one training step: `python benchmarks/profile_layers.py conv-net`."""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from numpy_cnn import Adam, CrossEntropyLoss, models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", choices=sorted(models.MODELS))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=50, help="steps timed; medians are reported")
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads (default: all)")
    args = parser.parse_args()
    with threadpool_limits(args.threads):
        blas = [(i["internal_api"], i["num_threads"], i.get("architecture")) for i in threadpool_info()]
        print(f"BLAS {blas}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
        net = models.build(args.model, seed=0)
        rng = np.random.default_rng(0)
        x = rng.random((args.batch_size, *models.input_shape(args.model)), dtype=np.float32)
        y = rng.integers(0, 10, args.batch_size)
        loss_f, opt = CrossEntropyLoss(), Adam(net.parameters)
        n = len(net.layers)
        fwd, bwd, rest = np.zeros((args.repeats, n)), np.zeros((args.repeats, n)), np.zeros(args.repeats)
        for r in range(-5, args.repeats):  # 5 warm-up steps
            h = x
            for i, layer in enumerate(net.layers):
                t = time.perf_counter()
                h = layer.forward(h)
                fwd[r, i] = time.perf_counter() - t
            t = time.perf_counter()
            g = loss_f.grad(h, y)
            loss_f.loss(h, y)
            rest[r] = time.perf_counter() - t
            for i in reversed(range(n)):
                t = time.perf_counter()
                g = net.layers[i].backward(g, input_grad=i > 0)  # as Net.backward does
                bwd[r, i] = time.perf_counter() - t
            t = time.perf_counter()
            opt.update()
            rest[r] += time.perf_counter() - t
        fm, bm = np.median(fwd, 0) * 1e3, np.median(bwd, 0) * 1e3
        print(f"{'layer':<60} {'fwd ms':>8} {'bwd ms':>8}")
        for i, layer in enumerate(net.layers):
            print(f"{i:>2} {layer!r:<57} {fm[i]:8.3f} {bm[i]:8.3f}")
        total = fm.sum() + bm.sum() + np.median(rest) * 1e3
        print(f"{'loss + Adam':<60} {np.median(rest) * 1e3:17.3f}")
        print(f"{'step (sum of medians)':<60} {total:17.3f} ms")
        steps = -(-60000 // args.batch_size)
        print(f"=> about {total * steps / 1e3:.2f} s per epoch of {steps} steps")


if __name__ == "__main__":
    main()
