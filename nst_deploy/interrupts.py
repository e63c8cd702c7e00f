"""Ctrl-C handling shared by the long-running work: one home for how SIGINT is deferred."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

__all__ = ["DeferredInterrupt", "interrupts_held"]


class DeferredInterrupt:
    """Within the main thread, Ctrl-C sets ``requested``, which a loop reads between steps (to save a
    checkpoint and stop cleanly); a second Ctrl-C raises KeyboardInterrupt at once."""

    def __init__(self):
        self.requested = False
        self._old = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            with contextlib.suppress(ValueError):
                self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


@contextlib.contextmanager
def interrupts_held(on_interrupt: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold SIGINT off (main thread only) for a short critical section that must not be cut in half;
    ``on_interrupt`` is called after it if one arrived (the section itself completes)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield
        return
    got: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if got and on_interrupt is not None:
            on_interrupt()
