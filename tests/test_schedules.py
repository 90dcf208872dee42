"""Learning-rate schedules against their closed forms."""

from __future__ import annotations

import math

import pytest

from numpy_cnn.schedules import constant, cosine


def test_cosine_endpoints_and_midpoint():
    assert cosine(0.1, 0, 100) == 0.1
    assert cosine(0.1, 50, 100) == pytest.approx(0.05, abs=1e-15)
    assert cosine(0.1, 100, 100) == pytest.approx(0.0, abs=1e-15)
    assert cosine(0.1, 150, 100) == pytest.approx(0.0, abs=1e-15)  # past the end it stays at 0
    assert cosine(0.1, 25, 100) == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))


def test_constant():
    assert constant(0.3, 7, 10) == 0.3
