"""Progress lines on stderr for the long-running commands (a live line on a terminal, a line every
tenth of the work otherwise): one home for how progress is shown, below the command line."""

from __future__ import annotations

import os
import sys
import time

__all__ = ["CountProgress", "Progress", "TrainProgress"]


class Progress:
    """A one-line progress bar on stderr (a line every 10% when stderr is not a terminal)."""

    def __init__(self, steps: list[int], sizes: list[int] | None = None, stream=None):
        self.stream = stream or sys.stderr
        self.steps = steps
        # the cost of a step grows with the pixels: weight each scale's steps by size^2 for the ETA
        sizes = sizes or [1] * len(steps)
        self.cost = [float(z * z) / max(sizes) ** 2 for z in sizes]
        self.total = sum(steps)
        self.tty = self.stream.isatty()
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.done = 0
        self.base: int | None = None

    def __call__(self, info) -> None:
        self.done = sum(self.steps[: info.scale]) + info.step
        now = time.perf_counter()
        if self.base is None:  # time from the first step on (not the setup; a resumed run counts on)
            self.base, self.t0 = self.done - 1, now - info.seconds
        final = self.done == self.total
        every = max(1, self.total // 10)
        if self.tty and not final and now - self.last < 0.1:
            return
        if not self.tty and not final and self.done % every:
            return
        self.last = now
        elapsed = now - self.t0
        rate = elapsed / max(1, self.done - self.base)  # seconds per step so far, shown
        work = [c * n for c, n in zip(self.cost, self.steps, strict=True)]
        done_work = sum(work[: info.scale]) + self.cost[info.scale] * info.step
        base_work = self._work_at(self.base)
        per_work = elapsed / max(done_work - base_work, 1e-12)
        eta = per_work * (sum(work) - done_work)
        width = 24
        fill = round(width * self.done / self.total)
        t = info.terms
        scale = f"scale {info.scale + 1}/{info.scales} " if info.scales > 1 else ""
        h, w = info.image.shape[-2:]
        line = (f"{scale}{w}x{h} step {info.step}/{info.steps} [{'#' * fill}{'.' * (width - fill)}] "
                f"{rate:.2f} s/step eta {eta:.0f}s  loss {t.total:.3e} (content {t.content:.2e} "
                f"style {t.style:.2e}{f' tv {t.tv:.2e}' if t.tv else ''})")
        if info.optimizer:
            line += f" {info.optimizer}"
        if self.tty:
            cols = _columns(self.stream)
            self.stream.write("\r" + (line[: cols - 1] if cols else line))
            if final:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def _work_at(self, done: int) -> float:
        """The size-weighted work of the first ``done`` steps."""
        work, left = 0.0, done
        for c, n in zip(self.cost, self.steps, strict=True):
            k = min(n, left)
            work += c * k
            left -= k
        return work


def _columns(stream) -> int | None:
    """The terminal width of ``stream``, or None when it has none."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        return None




class TrainProgress:
    """One progress line on stderr (a line every ``log_every`` steps when stderr is not a terminal)."""

    def __init__(self, every: int, stream=None, distill_steps: int = 0):
        self.stream = stream or sys.stderr
        self.distill_steps = distill_steps  # steps whose terms are the distillation's pixel and feature terms
        self.tty = self.stream.isatty()
        self.every = every
        self.t0 = time.perf_counter()
        self.first: int | None = None

    def __call__(self, step: int, steps: int, terms, rate: float) -> None:
        if self.first is None:
            self.first, self.t0 = step - 1, time.perf_counter()
        if not self.tty and step % self.every and step != steps:
            return
        done = step - self.first
        eta = (time.perf_counter() - self.t0) / max(done, 1) * (steps - step)
        fill = round(24 * step / steps)
        line = f"step {step}/{steps} [{'#' * fill}{'.' * (24 - fill)}] {rate:.2f} img/s eta {eta:.0f}s  "
        if step <= self.distill_steps:
            line += f"distill {terms.total:.3e} (pixel {terms.content:.2e} feature {terms.style:.2e})"
        else:
            line += (f"loss {terms.total:.3e} (content {terms.content:.2e} style {terms.style:.2e} "
                     f"tv {terms.tv:.2e})")
        self.stream.write(("\r" + line + ("\n" if step == steps else "")) if self.tty else line + "\n")
        self.stream.flush()




class CountProgress:
    """Items done out of a total, with items/s and the ETA (a live line on a terminal, a line every tenth
    of the work otherwise): ``progress(done, total, rate)``; :meth:`clear` ends a live line."""

    def __init__(self, total: int, what: str = "items", stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.total, self.what = total, what
        self.last, self.last_done, self.open = 0.0, 0, False

    def __call__(self, done: int, total: int, rate: float) -> None:
        now = time.perf_counter()
        final = done >= total
        if self.tty and not final and now - self.last < 0.1:
            return
        if not self.tty and not final and done - self.last_done < max(1, total // 10):
            return
        self.last, self.last_done = now, done
        eta = (total - done) / rate if rate > 0 else float("inf")
        width = 24
        fill = round(width * done / max(total, 1))
        line = (f"{done}/{total} {self.what} [{'#' * fill}{'.' * (width - fill)}] {rate:.2f} {self.what}/s"
                f"{f' eta {eta:.0f}s' if eta != float('inf') and not final else ''}")
        if self.tty:
            cols = _columns(self.stream)
            self.stream.write("\r" + (line[: cols - 1] if cols else line))
            self.open = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """End a live line (before another message, or at the end)."""
        if self.open:
            self.stream.write("\n")
            self.stream.flush()
            self.open = False
