"""The prefetcher: order, bounded look-ahead, exception propagation, early close."""

from __future__ import annotations

import threading
import time

import pytest

from lnassist.escnn.prefetch import prefetch


def test_yields_in_order_despite_uneven_load_times():
    def load(i: int) -> int:
        time.sleep(0.002 * ((7 * i) % 5))  # later items often finish first
        return i * i

    assert list(prefetch(range(40), load, workers=4, depth=6)) == [i * i for i in range(40)]


def test_synchronous_mode_gives_the_same_results():
    assert list(prefetch(range(10), str, workers=0)) == [str(i) for i in range(10)]


def test_look_ahead_is_bounded_by_depth():
    lock = threading.Lock()
    started = 0
    consumed = 0
    worst = 0

    def load(i: int) -> int:
        nonlocal started, worst
        with lock:
            started += 1
            worst = max(worst, started - consumed)
        return i

    for _ in prefetch(range(50), load, workers=3, depth=4):
        time.sleep(0.001)  # a slow consumer: producers would run far ahead if unbounded
        with lock:
            consumed += 1
    assert worst <= 4
    assert worst >= 2  # it did run ahead


def test_producer_exception_reaches_consumer_at_its_item():
    def load(i: int) -> int:
        if i == 5:
            raise OSError("cannot read tile 5")
        return i

    got = []
    with pytest.raises(OSError, match="tile 5"):
        for value in prefetch(range(10), load, workers=2, depth=3):
            got.append(value)
    assert got == [0, 1, 2, 3, 4]


def test_closing_early_stops_loading():
    calls = []

    def load(i: int) -> int:
        calls.append(i)
        return i

    it = prefetch(range(1000), load, workers=2, depth=3)
    assert next(it) == 0
    it.close()
    assert len(calls) <= 4


def test_rejects_zero_depth():
    with pytest.raises(ValueError, match="depth"):
        list(prefetch(range(3), str, workers=1, depth=0))
