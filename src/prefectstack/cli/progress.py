"""The progress of `up`: each service as it becomes ready (or restarts, fails, is blocked),
with the time since `up` began, and a summary at the end.

It reads the same state the supervisor writes to state.json (`runtime.state.StackState`):
the foreground supervisor hands each new state over, `up --detach` reads the file. On a
terminal, `rich` draws the lines in colour under a spinner that names what is still
starting (not in the foreground, where the services' logs stream: lines only); otherwise (a
pipe, a log file, a test) the lines are plain, one per change.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from prefectstack import console

if TYPE_CHECKING:
    from rich.console import Console
    from rich.status import Status

    from prefectstack.runtime.state import ServiceState, StackState

UP_STATES = ("ready", "completed")
_SHOWN = {"ready": "green", "completed": "green", "backoff": "yellow", "failed": "red",
          "blocked": "red"}


def is_terminal() -> bool:
    return sys.stdout.isatty() and sys.stderr.isatty()


class StartProgress:
    def __init__(
        self, *, terminal: bool | None = None, spinner: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.began = clock()
        self.terminal = is_terminal() if terminal is None else terminal
        self.spinner = spinner
        self.reported: dict[str, tuple[str, int]] = {}  # name -> (state, restarts) shown
        self.last: StackState | None = None
        self.finished = False
        self._console: Console | None = None
        self._status: Status | None = None
        if self.terminal:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)

    def elapsed(self) -> float:
        return self.clock() - self.began

    def update(self, current: StackState) -> None:
        """Report what changed since the last state seen."""
        if self.finished:
            return
        self.last = current
        total = len(current.services)
        for svc in current.services:
            shown = (svc.state, svc.restarts)
            if svc.state not in _SHOWN or self.reported.get(svc.name) == shown:
                continue
            self.reported[svc.name] = shown
            done = sum(1 for s in current.services if s.state in UP_STATES)
            self._line(f"{_describe(svc)} after {self.elapsed():.1f}s ({done}/{total})",
                       _SHOWN[svc.state])
        self._spin(current)

    def finish(self, current: StackState | None = None) -> None:
        """The summary line, once: how long the start took and what came up."""
        if self.finished:
            return
        if current is not None:
            self.update(current)
        self.finished = True
        self._stop_spinner()
        final = current or self.last
        if final is None:
            return
        text, style = summary_line(final, self.elapsed())
        self._line(text, style)

    def _line(self, text: str, style: str) -> None:
        if self._console is None:
            console.event(text)
            return
        from rich.text import Text

        stamp = time.strftime("%H:%M:%S")
        self._console.print(Text.assemble((f"{stamp} prefectstack | ", "bold"), (text, style)))

    def _spin(self, current: StackState) -> None:
        if self._console is None or not self.spinner:
            return
        waiting = [s.name for s in current.services if s.state not in (*UP_STATES, "failed",
                                                                          "blocked")]
        if not waiting:
            self._stop_spinner()
            return
        shown = ", ".join(waiting[:4]) + (f" and {len(waiting) - 4} more" if len(waiting) > 4
                                          else "")
        text = f"starting: {shown}"
        if self._status is None:
            self._status = self._console.status(text)
            self._status.start()
        else:
            self._status.update(text)

    def _stop_spinner(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def _describe(svc: ServiceState) -> str:
    if svc.state == "backoff":
        return f"{svc.name} restarting (restart {svc.restarts + 1})"
    if svc.state == "failed" and svc.last_exit is not None:
        return f"{svc.name} failed (exit code {svc.last_exit})"
    return f"{svc.name} {svc.state}"


def summary_line(current: StackState, elapsed: float) -> tuple[str, str]:
    """`stack ready in 21.4s: 8 services ready, 3 jobs completed` (and what failed)."""
    count = {name: [s.name for s in current.services if s.state == name]
             for name in ("ready", "completed", "failed", "blocked")}
    parts = [f"{len(count['ready'])} services ready"]
    if count["completed"]:
        parts.append(f"{len(count['completed'])} jobs completed")
    for bad in ("failed", "blocked"):
        if count[bad]:
            parts.append(f"{bad}: {', '.join(count[bad])}")
    if current.phase == "ready":
        style = "bold yellow" if count["failed"] or count["blocked"] else "bold green"
        return f"stack ready in {elapsed:.1f}s: " + "; ".join(parts), style
    return f"stack {current.phase} after {elapsed:.1f}s: " + "; ".join(parts), "bold red"
