"""EpochStats: the exposed communication is the part of a step that no worker's computation covers."""

from __future__ import annotations

import pytest

from numpy_cnn.distributed.stats import EpochStats, boot_id, format_timing


def test_exposed_time_is_what_no_interval_covers():
    stats = EpochStats(steps=2)
    # overlapping and nested intervals, one sticking out of the step on each side
    stats.add_exposed(10.0, 20.0, [(9.0, 12.0), (11.0, 13.0), (15.0, 16.0), (15.5, 15.8), (19.0, 25.0)])
    assert stats.exposed == pytest.approx(10.0 - (3.0 + 1.0 + 1.0))
    stats.add_exposed(0.0, 4.0, [])  # nobody computed: all of it was exposed
    assert stats.exposed == pytest.approx(9.0)
    assert stats.timing()["exposed_comm_ms"] == pytest.approx(4500.0)
    stats.add_exposed(0.0, 1.0, None)  # a worker on another machine: its clock is not ours
    timing = stats.timing()
    assert timing["exposed_comm_ms"] is None and "no worker computing" not in format_timing(
        timing | {"step_ms": 1}
    )


def test_boot_id_is_this_machines():
    assert boot_id() == boot_id() and len(boot_id()) in (0, 36)
