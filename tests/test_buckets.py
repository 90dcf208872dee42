"""The bucket plan: the parameters in the order the backward pass finishes them, a pure function
of the net."""

from __future__ import annotations

import math

import numpy as np
import pytest

from numpy_cnn import buckets
from numpy_cnn.models import build


def test_conv_net_buckets_are_the_linear_head_fc1_and_the_convolutions():
    net = build("conv-net")
    plan = buckets.plan(net)
    assert plan == [[6, 7, 8, 9], [4, 5], [0, 1, 2, 3]]  # fc3+fc2, fc1 alone, conv2+conv1
    assert buckets.lowest_layers(net, plan) == [9, 7, 0]
    assert plan == buckets.plan(build("conv-net", seed=9))  # the weights do not matter


def test_every_parameter_once_layers_whole_and_the_cap_respected():
    for name in ("fc-net", "conv-net"):
        net = build(name)
        sizes = [p.data.nbytes for p in net.parameters]
        for cap in (1, 4096, buckets.BUCKET_BYTES, 1 << 30):
            plan = buckets.plan(net, cap)
            assert sorted(i for b in plan for i in b) == list(range(len(sizes)))
            for layer in buckets.layer_params(net):  # a layer's parameters share a bucket
                assert sum(set(layer) <= set(b) for b in plan) == 1
            for b in plan:  # over the cap only when it is one layer
                assert sum(sizes[i] for i in b) <= cap or any(
                    set(b) == set(layer) for layer in buckets.layer_params(net)
                )
            lows = buckets.lowest_layers(net, plan)
            assert lows == sorted(lows, reverse=True)  # finished in backward order
        assert len(buckets.plan(net, 1 << 30)) == 1


def test_buckets_auto_streams_only_where_every_local_process_has_a_core():
    from numpy_cnn.distributed.config import JobConfig, local_buckets

    assert local_buckets("auto", 2, cores=2) == ("stream", "")  # one worker and the server
    mode, why = local_buckets("auto", 3, cores=2)  # two workers and the server on two cores
    assert mode == "one" and "3 processes on 2 cores" in why and "--buckets stream" in why
    assert local_buckets("stream", 9, cores=2) == ("stream", "")  # asked for: as asked
    assert local_buckets("one", 2, cores=16) == ("one", "")
    net = build("conv-net")
    assert len(buckets.plan(net, JobConfig("conv-net", buckets="one").bucket_cap)) == 1
    assert JobConfig("conv-net").bucket_cap == JobConfig("conv-net", buckets="stream").bucket_cap
    assert JobConfig("conv-net", buckets="one").bucket_cap == math.inf
    with pytest.raises(ValueError, match="--buckets must be one of auto, stream, one, got 'some'"):
        JobConfig("conv-net", buckets="some").check()


def test_a_layout_lays_each_bucket_out_as_one_span_of_its_parameters_end_to_end():
    net = build("conv-net", seed=3)
    plan = buckets.plan(net)
    layout = buckets.Layout.of(net, plan)
    assert layout.size == sum(p.data.size for p in net.parameters)
    assert layout.start == [0, 850 + 10164, 850 + 10164 + 48120, layout.size]  # fc3+fc2, fc1, convs
    flat = np.concatenate([net.parameters[i].data.ravel() for ids in plan for i in ids])
    for view, p in zip(layout.views(flat), net.parameters):
        assert view.shape == p.shape and np.shares_memory(view, flat)
        assert view.tobytes() == p.data.tobytes()
    for b, ids in enumerate(plan):
        alone = flat[layout.span(b)].copy()  # a bucket as it travels
        assert len(alone) == layout.length(b)
        for view, i in zip(layout.bucket_views(b, alone), ids):
            assert np.shares_memory(view, alone) and view.tobytes() == net.parameters[i].data.tobytes()
    with pytest.raises(ValueError, match="does not hold each of 10 parameters once"):
        buckets.Layout.of(net, [[0, 1], [1, 2]])
    assert buckets.largest_bytes(net) == 48120 * 4  # fc1's bucket: the largest frame a job sends
    assert buckets.largest_bytes(net, math.inf) == layout.size * 4
