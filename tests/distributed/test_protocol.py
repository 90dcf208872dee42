"""The wire format: round trips without copies, and a clear rejection for every malformed message."""

from __future__ import annotations

import pickle

import msgpack
import numpy as np
import pytest

from numpy_cnn.distributed import protocol
from numpy_cnn.distributed.protocol import ProtocolError, decode, encode


def _params():
    return [np.arange(12, dtype=np.float32).reshape(3, 4), np.ones(5, dtype=np.float64)]


def _as_received(frames):
    return [bytearray(memoryview(f).cast("B")) for f in frames]  # like zmq frames: separate memory


def test_round_trip_without_copies():
    arrays = _params()
    fields = dict(step=3, version=3, epoch=0, index=2, nodes=[[0, 2]], buckets=[0], carried=[0], sides=[])
    frames = encode(protocol.PARAMS, arrays, **fields)
    assert frames[1] is arrays[0]  # the array itself is the frame: zmq sends it in place
    received = _as_received(frames)
    msg = decode(received)
    assert msg.type == protocol.PARAMS and msg["step"] == 3 and msg["index"] == 2
    for got, want, frame in zip(msg.arrays, arrays, received[1:]):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        assert np.shares_memory(got, np.frombuffer(frame, dtype=np.uint8))  # a view, not a copy
        assert not got.flags.writeable


def test_every_message_type_round_trips():
    samples = {
        protocol.HELLO: {"rank": 0, "pid": 1, "boot": "b"},
        protocol.WELCOME: {
            "rank": 1,
            "config": {"model": "fc-net"},
            "expect": {"protocol": "3"},
            "memory": {"params": "/tmp/x/params-1", "grads": "/tmp/x/grads-0-1", "lane": "/tmp/x/lane"},
        },
        protocol.REFUSE: {"rank": 1, "reason": "model differs"},
        protocol.READY: {"rank": 1, "lane": "00" * 16},
        protocol.PARAMS: {
            "step": 0,
            "version": 0,
            "epoch": 0,
            "index": 0,
            "nodes": [[0, 1]],
            "buckets": [0],
            "carried": [0],
            "sides": [1],
        },
        protocol.UPDATE: {"step": 0, "version": 1, "bucket": 2, "side": -1},
        protocol.GRADS: {
            "step": 1,
            "version": 1,
            "bucket": 0,
            "rank": 0,
            "nodes": [[0, 2]],
            "counts": [32],
            "loss": 1.5,
            "correct": 3,
            "compute_s": 0.01,
            "started": 12.5,
            "taken": [12.1, 12.2, 0.0],
            "prepared": [12.0, 0.25],
            "shared": True,
        },
        protocol.HEARTBEAT: {"rank": 2, "answered": 5},
        protocol.STOP: {"reason": "done"},
    }
    assert set(samples) == set(protocol.SCHEMA)
    for type_, fields in samples.items():
        msg = decode(_as_received(encode(type_, **fields)))
        assert msg.type == type_ and msg.fields == fields


def _raw(header, *frames):
    return [msgpack.packb(header, use_bin_type=True), *frames]


GOOD = {"v": protocol.VERSION, "type": "ready", "rank": 0, "lane": "", "arrays": []}


@pytest.mark.parametrize(
    "frames,reason",
    [
        ([], "empty"),
        ([b"\xc1\x00garbage"], "not valid msgpack"),
        ([pickle.dumps({"v": 1, "type": "ready"})], "msgpack"),
        ([msgpack.packb([1, 2, 3])], "not a map"),
        (_raw({**GOOD, "v": protocol.VERSION + 1}), f"protocol version {protocol.VERSION + 1}"),
        (_raw({**GOOD, "type": "shutdown"}), "unknown message type"),
        (_raw({k: v for k, v in GOOD.items() if k != "arrays"}), "no array list"),
        (_raw({k: v for k, v in GOOD.items() if k != "rank"}), "fields"),
        (_raw({**GOOD, "extra": 1}), "fields"),
        (_raw({**GOOD, "rank": "0"}), "expected int"),
        (_raw({**GOOD, "rank": True}), "expected int"),
        (_raw({**GOOD, "arrays": [["<f4", [2]]]}), "declares 1 arrays but 0 frames"),
        (_raw(GOOD, b"1234"), "declares 0 arrays but 1 frames"),
        (_raw({**GOOD, "arrays": [["|O", [1]]]}, b"12345678"), "dtype"),
        (_raw({**GOOD, "arrays": [["<i8", [1]]]}, b"12345678"), "dtype"),
        (_raw({**GOOD, "arrays": [["<f4", [-1]]]}, b""), "bad shape"),
        (_raw({**GOOD, "arrays": [["<f4", [1 << 40]]]}, b"1234"), "needs"),
        (_raw({**GOOD, "arrays": [["<f4", [3]]]}, b"1234"), "needs 12 bytes, frame has 4"),
        (_raw({**GOOD, "arrays": ["<f4"]}, b"1234"), "spec"),
        ([b"\x81" + msgpack.packb("x" * (1 << 16)) + b"\x00"], "over the"),
    ],
)
def test_malformed_messages_are_rejected_with_a_reason(frames, reason):
    with pytest.raises(ProtocolError, match=reason):
        decode(frames)


@pytest.mark.parametrize(
    "loss, reason",
    [
        (float("nan"), "grads.loss is nan"),
        (float("-inf"), "grads.loss is -inf"),
        (True, "grads.loss is a bool, expected float"),  # a bool is an int to Python, not to us
        ("1.5", "grads.loss is a str, expected float"),
        (None, "grads.loss is a NoneType, expected float"),
        (3, None),  # a whole number is a float field's value too
    ],
)
def test_a_float_field_takes_finite_numbers_only(loss, reason):
    fields = {"step": 1, "version": 1, "bucket": 0, "rank": 0, "nodes": [[0, 1]], "counts": [1], "correct": 0}
    header = {
        "v": protocol.VERSION,
        "type": "grads",
        **fields,
        "loss": loss,
        "compute_s": 0.0,
        "started": 0.0,
        "taken": [],
        "prepared": [],
        "shared": False,
        "arrays": [],
    }
    if reason is None:
        assert decode(_raw(header))["loss"] == loss
    else:
        with pytest.raises(ProtocolError, match=f"^{reason}$"):
            decode(_raw(header))


def test_encode_refuses_arrays_it_cannot_send_as_they_are():
    fields = dict(step=0, version=0, epoch=0, index=0, nodes=[[0, 1]], buckets=[0], carried=[0], sides=[])
    for bad in (np.ones((4, 4), np.float32)[:, ::2], np.ones(3, np.int64)):  # strided; not a float
        with pytest.raises(TypeError):
            encode(protocol.PARAMS, [bad], **fields)
    with pytest.raises(ProtocolError):
        encode(protocol.READY)
