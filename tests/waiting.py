"""One way for tests to wait for a condition: poll it until it holds or time is up."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable


def until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """The first truthy value of ``condition()``; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} (after {timeout} s): {value!r}")
        time.sleep(interval)


async def until_async(
    condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05
):
    """:func:`until` for async tests; ``condition`` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} (after {timeout} s): {value!r}")
        await asyncio.sleep(interval)
