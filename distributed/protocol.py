"""The wire format: one msgpack header frame, then one raw frame per array. Nothing is pickled.

The header names the protocol version, the message type, its fields, and the dtype and shape of
each array frame. `decode` checks all of that against the frames before any array is made, and
the arrays it returns are read-only views of the received frames (no copy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

VERSION = 10  # 3: WELCOME carries what workers must agree with; REFUSE. 4: buckets, UPDATE. 5: GRADS.taken
# 6: PARAMS.carried. 7: a bucket's parameters or gradient sums travel as one flat array. 8: shared
# memory with the workers on the server's machine (WELCOME.memory, PARAMS.sides, UPDATE.side,
# GRADS.shared). 9: their lanes (WELCOME.memory's lane, READY.lane; distributed/lane.py).
# 10: GRADS.prepared
HEARTBEATS_PER_TIMEOUT = 5  # a peer silent for a whole --timeout has missed this many heartbeats

HELLO = "hello"  # worker -> server: rank, pid, boot (the machine's boot id: is its clock ours?)
WELCOME = "welcome"  # server -> worker: rank, the job's config, what the worker must agree with
REFUSE = "refuse"  # worker -> server: rank, how it differs (protocol, package, model, data)
READY = "ready"  # worker -> server: rank; its data and replica are built
PARAMS = "params"  # server -> worker: step, batch, the nodes and buckets to compute; the buckets it lacks
UPDATE = "update"  # server -> worker: one bucket's new parameters, as soon as the server has them
GRADS = "grads"  # worker -> server: one bucket's gradient sums over those nodes, and batch statistics
HEARTBEAT = "heartbeat"  # both ways while nothing else is said: rank; the sender is alive
STOP = "stop"  # server -> worker: reason
FINISHED = "training finished"  # the STOP reason of a job that ended well; any other is a failure

# each message type's fields and their types; every field is required, no other is allowed
SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    HELLO: {"rank": int, "pid": int, "boot": str},
    # memory: {"params": path, "grads": path} of the files a worker on the server's machine maps
    # (distributed/memory.py), and "lane": path, the socket its lane connects to (lane.py), if
    # there is one; or {} for a worker that gets the arrays in the messages
    WELCOME: {"rank": int, "config": dict, "expect": dict, "memory": dict},
    REFUSE: {"rank": int, "reason": str},
    # lane: the token the worker sent on the lane it connected (hex), from then on the way its
    # messages go both ways; "" for none
    READY: {"rank": int, "lane": str},
    PARAMS: {
        "step": int,
        "version": int,
        "epoch": int,
        "index": int,
        "nodes": list,  # [[lo, hi], ...] shard-tree nodes whose gradient sums the server wants
        "buckets": list,  # the buckets (numpy_cnn.buckets) whose sums it wants, one GRADS each
        # the buckets whose values of `version` the arrays are, one flat array each (ascending;
        # numpy_cnn.buckets.Layout); the job uses the ones the worker holds for the others,
        # which must be of `version`
        "carried": list,
        # for a worker that maps the server's parameters: which of the two buffers holds each
        # carried bucket's values, and no arrays; else []
        "sides": list,
    },
    # version: the new one; its flat array, or for a worker that maps the parameters, the buffer
    # that holds it (side; else -1)
    UPDATE: {"step": int, "version": int, "bucket": int, "side": int},
    GRADS: {
        "step": int,
        "version": int,
        "bucket": int,
        "rank": int,
        "nodes": list,  # [[lo, hi], ...] shard ranges, one flat array (the bucket's sum) per node
        "counts": list,  # samples in each node
        "loss": float,  # sum of the per-sample losses
        "correct": int,
        "compute_s": float,  # from `started` until this bucket's sums were ready
        "started": float,  # when the computation began, on the worker's monotonic clock
        # when the worker took each bucket's UPDATE of the step before, on the same clock (0.0:
        # it did not: it got that step's parameters otherwise, or there was none)
        "taken": list,
        # when the worker made this job's batch ahead (Worker.prepare_next), after its job before:
        # [start, seconds] on the same clock; [] if it made none
        "prepared": list,
        # the sums are in the worker's gradient file (WELCOME.memory), at each node's slot,
        # instead of in arrays
        "shared": bool,
    },
    HEARTBEAT: {"rank": int, "answered": int},  # answered: PARAMS the worker has sent every bucket of
    STOP: {"reason": str},
}
NUMBER = (int, float)  # what a float field takes (not a bool)
DTYPES = {np.dtype(np.float32).str: np.float32, np.dtype(np.float64).str: np.float64}
MAX_HEADER_BYTES = 1 << 16
MAX_ARRAYS = 1 << 12
MAX_DIMS = 8


class ProtocolError(ValueError):
    """A message that is malformed, or is not what the receiver expects."""


@dataclass
class Message:
    type: str
    fields: dict[str, Any]
    arrays: list[np.ndarray]

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]


def encode(type_: str, arrays: Sequence[np.ndarray] = (), **fields: Any) -> list:
    """Frames of one message: the packed header, then each array itself (sent without a copy)."""
    _check_fields(type_, fields)
    for a in arrays:
        if not a.flags.c_contiguous or a.dtype.str not in DTYPES:
            raise TypeError(f"cannot send a {a.dtype} array with strides {a.strides}")
    header = {"v": VERSION, "type": type_, **fields, "arrays": [[a.dtype.str, list(a.shape)] for a in arrays]}
    return [msgpack.packb(header, use_bin_type=True), *arrays]


def decode(frames: Sequence[Any]) -> Message:
    """Check and unpack received frames (bytes-like); raises ProtocolError saying what is wrong."""
    if not frames:
        raise ProtocolError("empty message")
    head = memoryview(frames[0])
    if head.nbytes > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {head.nbytes} bytes is over the {MAX_HEADER_BYTES} limit")
    try:
        header = msgpack.unpackb(
            head,
            raw=False,
            strict_map_key=True,
            max_bin_len=0,
            max_ext_len=0,
            max_array_len=MAX_ARRAYS,
            max_map_len=64,
            max_str_len=1 << 15,
        )
    except Exception as e:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"header is not valid msgpack: {type(e).__name__}: {e}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"header is a {type(header).__name__}, not a map")
    version = header.pop("v", None)  # what is left of the header are the fields
    if version != VERSION:
        raise ProtocolError(f"protocol version {version!r}, expected {VERSION}")
    type_ = header.pop("type", None)
    if type_ not in SCHEMA:
        raise ProtocolError(f"unknown message type {type_!r}")
    specs = header.pop("arrays", None)
    if not isinstance(specs, list):
        raise ProtocolError("header has no array list")
    fields = header
    _check_fields(type_, fields)
    if len(specs) != len(frames) - 1:
        raise ProtocolError(f"header declares {len(specs)} arrays but {len(frames) - 1} frames follow")
    arrays = [_array(spec, frame, i) for i, (spec, frame) in enumerate(zip(specs, frames[1:]))]
    return Message(type_, fields, arrays)


def _check_fields(type_: str, fields: dict[str, Any]) -> None:
    # on every message, both ways, between a step's last gradient and the next forward pass: lean
    schema = SCHEMA[type_]
    if fields.keys() != schema.keys():
        raise ProtocolError(f"{type_} message has fields {sorted(fields)}, expected {sorted(schema)}")
    for key, kind in schema.items():
        value = fields[key]
        if kind is float:
            if not isinstance(value, NUMBER) or type(value) is bool:
                raise ProtocolError(f"{type_}.{key} is a {type(value).__name__}, expected float")
            if not math.isfinite(value):
                raise ProtocolError(f"{type_}.{key} is {value}")
        elif not isinstance(value, kind) or (type(value) is bool and kind is not bool):
            raise ProtocolError(f"{type_}.{key} is a {type(value).__name__}, expected {kind.__name__}")


def _array(spec: Any, frame: Any, i: int) -> np.ndarray:
    if not (isinstance(spec, list) and len(spec) == 2 and isinstance(spec[1], list)):
        raise ProtocolError(f"array {i}: spec {spec!r} is not [dtype, shape]")
    dtype, shape = spec
    if dtype not in DTYPES:
        raise ProtocolError(f"array {i}: dtype {dtype!r} is not one of {sorted(DTYPES)}")
    if len(shape) > MAX_DIMS or not all(type(d) is int and 0 <= d for d in shape):
        raise ProtocolError(f"array {i}: bad shape {shape!r}")
    buf = memoryview(frame)
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    if buf.nbytes != expected:
        raise ProtocolError(
            f"array {i}: {dtype} {tuple(shape)} needs {expected} bytes, frame has {buf.nbytes}"
        )
    array = np.frombuffer(buf, dtype=DTYPES[dtype]).reshape(shape)
    array.flags.writeable = False  # a view of the received frame: nobody writes into it
    return array
