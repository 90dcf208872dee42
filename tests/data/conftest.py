"""Helpers for the data tests."""

from __future__ import annotations

import hashlib

import pytest


@pytest.fixture
def hashed(monkeypatch) -> list[int]:
    """The sizes of the data given to hashlib.sha256, one per call, from now on."""
    calls, real = [], hashlib.sha256

    def counting(data=b"", *args, **kwargs):
        calls.append(len(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(hashlib, "sha256", counting)
    return calls
