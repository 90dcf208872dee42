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


def test_a_step_adds_up_and_gives_per_bucket_times_after_its_start():
    stats = EpochStats()
    answers = [  # the last bucket's answers: each ends its worker's job
        {"compute_s": 0.006, "started": 100.001, "loss": 1.0, "correct": 3, "prepared": []},
        {"compute_s": 0.008, "started": 100.001, "loss": 2.0, "correct": 4, "prepared": []},
    ]
    times = ([100.004, 100.009], [100.005, 100.0095], [100.006, 100.0099])
    stats.add_step(64, answers, (5.0, 5.010), (100.0, 100.010), 0.001, True, times)
    timing = stats.timing()
    assert (stats.loss, stats.correct, stats.samples) == (3.0, 7, 64)
    assert timing["compute_ms"] == 8.0 and timing["update_ms"] == 1.0 and timing["comm_ms"] == 1.0
    assert timing["step_ms"] == 10.0
    assert timing["exposed_comm_ms"] == pytest.approx(2.0)  # before both started, after both ended
    assert timing["bucket_ready_ms"] == [4.0, 9.0]
    assert timing["bucket_in_ms"] == [5.0, 9.5]
    assert timing["bucket_sent_ms"] == [6.0, 9.9]
    assert "bucket_taken_ms" not in timing  # the first step: no step before it
    stats.add_step(64, answers, (5.0, 5.010), (100.010, 100.020), 0.001, True, times, [0.0061, 0.0103])
    assert stats.timing()["bucket_taken_ms"] == [6.1, 10.3]
    stats.add_step(64, answers, (5.0, 5.010), None, 0.001, True, times)  # another machine's clock
    assert stats.timing()["exposed_comm_ms"] is None and len(stats.bucket_ready) == 2


def test_a_next_batch_made_ahead_counts_as_computing_in_the_steps_it_covers():
    def answer(started: float, seconds: float, prepared: list[float]) -> dict:
        return {"compute_s": seconds, "started": started, "loss": 0.0, "correct": 0, "prepared": prepared}

    times = ([], [], [])
    stats = EpochStats()
    # worker 0 computes [100.001, 100.007], worker 1 [100.001, 100.009]: 1 ms before, 1 ms after
    first = [answer(100.001, 0.006, []), answer(100.001, 0.008, [])]
    stats.add_step(64, first, (5.0, 5.010), (100.0, 100.010), 0.001, True, times)
    assert stats.timing()["exposed_comm_ms"] == pytest.approx(2.0)
    # their next answers say when they made this batch: worker 0 within its own idle time (which
    # worker 1's compute covered anyway), worker 1 from 100.009 to 100.0105, into this step
    second = [answer(100.011, 0.008, [100.007, 0.002]), answer(100.011, 0.008, [100.009, 0.0015])]
    stats.add_step(64, second, (5.010, 5.020), (100.010, 100.020), 0.001, True, times)
    # the first step: 1 ms (before the workers started); the second: 0.5 ms before, 1 ms after
    assert stats.exposed == pytest.approx(0.001 + 0.0015)
    # a step on another machine's clock (unknown), then one whose step before is unknown: nothing
    # to take off either
    stats.add_step(64, second, (5.020, 5.030), None, 0.001, True, times)
    assert stats.window is None and stats.timing()["exposed_comm_ms"] is None
    stats.add_step(64, second, (5.030, 5.040), (100.030, 100.040), 0.001, True, times)
    # a known step after it starts afresh: its own window (the intervals all lie before it), and
    # no correction of the unknown one
    assert stats.window[:2] == (100.030, 100.040) and len(stats.window[2]) == 4
    assert stats.exposed == pytest.approx(0.0025 + 0.010) and stats.timing()["exposed_comm_ms"] is None


def test_a_lines_exposed_time_never_goes_below_zero():
    """The batches made during a line's last step come off the next line (StepLog's records)."""
    stats = EpochStats()
    answers = [{"compute_s": 0.008, "started": 100.001, "loss": 0.0, "correct": 0, "prepared": []}]
    stats.add_step(64, answers, (5.0, 5.010), (100.0, 100.010), 0.001, True, ([], [], []))
    before = stats.totals()  # a line ends here, with 2 ms exposed
    answers = [{"compute_s": 0.010, "started": 100.010, "loss": 0.0, "correct": 0, "prepared": [100.0, 0.01]}]
    stats.add_step(64, answers, (5.010, 5.020), (100.010, 100.020), 0.001, True, ([], [], []))
    assert stats.exposed == pytest.approx(0.0)  # the batch covered the first step's 2 ms
    assert stats.since(before)["exposed"] == 0.0  # not -0.002


def test_update_times_are_taken_from_the_next_answers_relative_to_the_step_before():
    from numpy_cnn.distributed.stats import taken_after

    answers = [{"taken": [10.004, 10.009]}, {"taken": [10.005, 10.008]}]
    assert taken_after(answers, (6, 10.0), 7) == pytest.approx([0.005, 0.009])  # the last worker's
    assert taken_after(answers, (5, 10.0), 7) is None  # not the step before (a resume)
    assert taken_after(answers, None, 7) is None  # the first step
    assert taken_after([{"taken": [0.0, 10.009]}, *answers], (6, 10.0), 7) is None  # joined since
