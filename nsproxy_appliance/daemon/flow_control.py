"""Back-pressure between the two sides of a proxied exchange.

A transport's reading is paused for several independent reasons (the peer's write buffer is
full, a pipelined request waits its turn, the upstream is still connecting). ReadGate keeps them
as bits so one reason ending never resumes reading while another still holds.
"""

from __future__ import annotations

import asyncio

PEER_BACKPRESSURE = 1  # the other side's transport is above its write high-water mark
PIPELINE = 2  # a complete request waits for the responses before it (client side)
CONNECTING = 4  # the upstream connection for the active request is being opened (client side)

# Write buffer high-water mark per transport: with one read chunk in flight this bounds the
# memory one streaming exchange can hold, whatever the body size.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class ReadGate:
    __slots__ = ("reasons", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.reasons = 0

    def pause(self, reason: int) -> None:
        if not self.reasons and not self.transport.is_closing():
            self.transport.pause_reading()
        self.reasons |= reason

    def resume(self, reason: int) -> None:
        if self.reasons & reason:
            self.reasons &= ~reason
            if not self.reasons and not self.transport.is_closing():
                self.transport.resume_reading()


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_malloc_tuned = False


def tune_malloc() -> bool:
    """Keep freed body buffers in the heap instead of returning them to the kernel at once.

    Every read hands the proxy a fresh bytes object of up to 256 KiB. With glibc's defaults such
    buffers are mmap'd or trimmed back on free, so each one costs page faults and page clearing:
    measured here, about two thirds of the CPU time of a 1 MiB response. Raising the mmap and
    trim thresholds lets malloc reuse the same pages; memory stays bounded by the peak in use
    (the write-buffer limits above), it is just not handed back between requests.
    Idempotent; a no-op (False) where mallopt is unavailable (non-glibc).
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, 4 * 1024 * 1024) == 1 and mallopt(_M_TRIM_THRESHOLD, 32 * 1024 * 1024) == 1
    _malloc_tuned = ok
    return ok
