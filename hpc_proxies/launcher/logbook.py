"""The log a user reads in the Running panel: the app's output and the supervisor's
own messages, numbered, across restarts.

The progress page shows only the current start's last lines (``Launcher.tail``); the
log keeps more, and survives a restart, so "why did it stop?" can still be answered
after the next start. Readers ask for the lines after the last number they saw, and
may wait for new ones (the Jupyter side's log stream long-polls here).
"""

from __future__ import annotations

import asyncio
import collections
import time

#: Lines kept; older ones are dropped (a chatty app must not grow the supervisor).
LOG_LINES = 2000


class LogBook:
    """Numbered lines, the newest ``keep`` of them; waiters are woken by each line."""

    def __init__(self, keep: int = LOG_LINES) -> None:
        self._lines: collections.deque[tuple[int, float, str]] = collections.deque(maxlen=keep)
        self._next = 1
        self._changed: asyncio.Event | None = None

    @property
    def next_seq(self) -> int:
        return self._next

    def append(self, text: str) -> None:
        self._lines.append((self._next, time.time(), text))
        self._next += 1
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def since(self, seq: int) -> list[dict[str, object]]:
        """The lines numbered ``seq`` and after (as many as are still kept)."""
        return [
            {"seq": number, "time": stamp, "text": text}
            for number, stamp, text in self._lines
            if number >= seq
        ]

    async def wait_since(self, seq: int, timeout: float) -> list[dict[str, object]]:
        """Like :meth:`since`, but wait up to ``timeout`` seconds for a first line."""
        lines = self.since(seq)
        if lines or timeout <= 0:
            return lines
        if self._changed is None:
            self._changed = asyncio.Event()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:  # not the builtin one before Python 3.11
            return []
        return self.since(seq)
