"""Background.stop ends its task even when the body loses a cancellation (no servers)."""

from __future__ import annotations

import asyncio

import pytest

from pgshard import background
from pgshard.background import Background


async def test_stop_ends_a_body_that_swallowed_one_cancellation(monkeypatch):
    """As Python 3.11's wait_for can: the first CancelledError is eaten and the loop goes
    on sleeping. stop() cancels again and returns once the task has ended."""
    monkeypatch.setattr(background, "RECANCEL_AFTER", 0.05)
    rounds = []

    async def body():
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                rounds.append("cancelled")
                if len(rounds) == 1:
                    continue        # the lost cancellation
                raise

    bg = Background(body, "test-swallow")
    bg.start()
    task = bg.task
    await asyncio.sleep(0)
    await asyncio.wait_for(bg.stop(), 5)
    assert task.done() and rounds == ["cancelled", "cancelled"]


async def test_stop_reraises_what_the_body_failed_with():
    async def body():
        raise ValueError("boom")

    bg = Background(body, "test-fail")
    bg.start()
    await asyncio.sleep(0)
    with pytest.raises(ValueError):
        await bg.stop()
