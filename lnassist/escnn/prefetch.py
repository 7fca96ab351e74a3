"""Producer/consumer prefetching: load items in background threads, hand them out in order.

Reading and augmenting tile ``i + 1 ... i + depth`` happens while tile ``i`` computes, so the
compute loop only waits when loading is slower than computing. At most ``depth`` items are loaded
or loading at any time (a bounded queue), results come out in input order, and an exception raised
while loading an item is re-raised in the consumer when it reaches that item.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetch(items: Iterable[T], load: Callable[[T], R], workers: int = 2, depth: int = 4) -> Iterator[R]:
    """Yield ``load(item)`` for each item in order, loading up to ``depth`` items ahead in threads.

    ``workers == 0`` loads synchronously in the consumer's thread (no concurrency, same results).
    ``load`` must be thread-safe. Closing the iterator early cancels the loads not yet started.
    """
    if depth < 1:
        raise ValueError(f"prefetch depth must be >= 1, got {depth}")
    if workers <= 0:
        yield from map(load, items)
        return
    source = iter(items)
    pending: deque[Future[R]] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lnassist-prefetch")
    try:
        while True:
            while len(pending) < depth:
                item = next(source, _END)
                if item is _END:
                    break
                pending.append(pool.submit(load, item))
            if not pending:
                return
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


_END = object()
