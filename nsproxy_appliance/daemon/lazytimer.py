"""One loop timer per connection, moved only when a deadline comes earlier.

Most deadline changes push a deadline later (every byte read, every request). Cancelling and
re-creating the loop's TimerHandle each time is costly, so the timer stays where it is and the
owner's `_on_timer` re-arms it for the real deadline when it fires early.
"""

from __future__ import annotations

import asyncio


class LazyTimer:
    """Mixin for a protocol that sets `loop`, `_timer` (None) and `_timer_at` and defines `_on_timer`."""

    loop: asyncio.AbstractEventLoop
    _timer: asyncio.TimerHandle | None
    _timer_at: float

    def _on_timer(self) -> None:
        raise NotImplementedError

    def _arm(self, at: float) -> None:
        timer = self._timer
        if timer is None:
            self._timer = self.loop.call_at(at, self._on_timer)
            self._timer_at = at
        elif at < self._timer_at:
            timer.cancel()
            self._timer = self.loop.call_at(at, self._on_timer)
            self._timer_at = at
