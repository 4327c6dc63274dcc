"""A long-running asyncio task owned by one service: started once, stopped by cancelling."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine

RECANCEL_AFTER = 5.0


class Background:
    """Runs `body()` as a named task; stop() cancels it and waits until it has ended."""

    __slots__ = ("body", "name", "task")

    def __init__(self, body: Callable[[], Coroutine], name: str):
        self.body = body
        self.name = name
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self.body(), name=self.name)

    async def stop(self) -> None:
        task, self.task = self.task, None
        if task is None:
            return
        # A cancellation can be lost inside the body: Python 3.11's asyncio.wait_for drops
        # one that arrives as its inner await completes, and the loop goes on. So the task
        # is cancelled again while it still runs, RECANCEL_AFTER seconds apart (time for a
        # body's own clean-up to finish undisturbed).
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=RECANCEL_AFTER)
        try:
            task.result()
        except asyncio.CancelledError:
            pass
