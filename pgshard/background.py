"""A long-running asyncio task owned by one service: started once, stopped by cancelling."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine


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
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
