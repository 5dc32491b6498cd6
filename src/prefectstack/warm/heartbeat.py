"""Prefect 3.8.8's flow-run heartbeat, without its ~1 s stall at the end of every sync flow.

`prefect.flow_engine._send_heartbeats` runs a daemon thread that emits a heartbeat, then
sleeps in `time.sleep(1)` steps, checking a stop event between steps. A sync flow's engine
joins that thread on exit (`thread.join(timeout=2)`), so every sync flow run waits for the
thread's current one-second sleep to end: up to 1 s of wall time per run (no CPU), holding
the worker's concurrency slot. Async flows do not join and are not affected.

This copy differs only in the wait: `stop_event.wait(...)` returns as soon as the run ends.
It is installed in the warm forkserver (so in every child) for exactly the Prefect version
it was copied from; any other version keeps Prefect's own.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

PATCHED_VERSION = "3.8.8"


def install() -> bool:
    import prefect
    import prefect.flow_engine as engine_module

    if prefect.__version__ != PATCHED_VERSION:
        return False
    minimum = engine_module.MINIMUM_HEARTBEAT_INTERVAL

    @contextmanager
    def _send_heartbeats(engine: Any, join_on_exit: bool = True) -> Generator[None, None, None]:
        heartbeat_seconds = engine.heartbeat_seconds
        if heartbeat_seconds is None:
            yield
            return
        heartbeat_seconds = max(heartbeat_seconds, minimum)
        resource, related = engine._build_heartbeat_event_template()
        stop_event = threading.Event()

        def heartbeat_loop() -> None:
            while not stop_event.is_set():
                state = engine.flow_run.state if engine.flow_run else None
                if state and state.is_final():
                    engine.logger.debug("Flow run in terminal state, stopping heartbeat")
                    return
                try:
                    engine._emit_flow_run_heartbeat(resource, related)
                except Exception:
                    engine.logger.debug("Failed to emit heartbeat", exc_info=True)
                stop_event.wait(heartbeat_seconds)  # Prefect: time.sleep(1) steps

        # As Prefect does: the thread sees the caller's SettingsContext.
        heartbeat_ctx = contextvars.copy_context()
        thread = threading.Thread(target=heartbeat_ctx.run, args=(heartbeat_loop,), daemon=True)
        thread.start()
        engine.logger.debug("Started flow run heartbeat context")
        try:
            yield
        finally:
            stop_event.set()
            if join_on_exit:
                thread.join(timeout=2)
            engine.logger.debug("Stopped flow run heartbeat context")

    engine_module._send_heartbeats = _send_heartbeats
    return True
