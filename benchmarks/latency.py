"""ZeroMQ round trips between two processes over a Unix socket, blocking and busy-polling.

    python benchmarks/latency.py --sizes 100,10000,250000 --trips 2000

A ROUTER (this process) and a DEALER (a forked child) bounce one message of each size back and
forth. `block` waits in zmq's poll, as launch's processes do; `spin` polls without waiting until a
message is there. On a machine whose idle cores halt (a virtual machine's cpuidle `haltpoll`),
the difference is the price of waking a core: what each message on a step's critical path pays.
Prints the median and 90th percentile round trip of each size and mode.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import zmq


def echo(endpoint: str, spin: bool) -> None:
    """The child: send the messages back until told to stop."""
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.connect(endpoint)
    socket.send(b"hello")
    while True:
        if spin:
            while not socket.poll(0):
                pass
        frames = socket.recv_multipart(copy=False)
        if frames[0].bytes[:4] == b"stop":
            break
        socket.send_multipart(frames, copy=False)
    socket.close(linger=0)
    context.term()


def round_trips(size: int, trips: int, spin: bool) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="latency-") as folder:  # mode 0700
        endpoint = f"ipc://{folder}/socket"
        context = zmq.Context()
        router = context.socket(zmq.ROUTER)
        router.bind(endpoint)
        child = os.fork()
        if child == 0:
            try:
                echo(endpoint, spin)
            finally:
                os._exit(0)
        try:
            if not router.poll(10_000):
                raise TimeoutError("the echoing process did not connect within 10 s")
            peer, _ = router.recv_multipart()
            payload = b"x" * size
            times = []
            for _ in range(trips):
                start = time.perf_counter()
                router.send_multipart([peer, payload], copy=False)
                if spin:
                    while not router.poll(0):
                        pass
                elif not router.poll(10_000):
                    raise TimeoutError("no answer within 10 s")
                router.recv_multipart(copy=False)
                times.append(time.perf_counter() - start)
            router.send_multipart([peer, b"stop"])
        finally:
            os.waitpid(child, 0)
            router.close(linger=0)
            context.term()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="100,10000,250000", help="message sizes in bytes (default: %(default)s)"
    )
    parser.add_argument(
        "--trips", type=int, default=2000, help="round trips per size and mode (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    for size in (int(s) for s in args.sizes.split(",")):
        for spin in (False, True):
            times = sorted(round_trips(size, args.trips, spin))
            p90 = times[int(0.9 * (len(times) - 1))]
            mode = "spin" if spin else "block"
            print(
                f"{size:>8} bytes, {mode:>5}: median {statistics.median(times) * 1e6:7.0f} us, "
                f"90th percentile {p90 * 1e6:7.0f} us",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
