"""Several processes opening one new SQLite store file at once (`pgshard serve --workers N`
with an sqlite:// store) all get it: the switch to WAL they race for is retried."""

from __future__ import annotations

import multiprocessing as mp


def _open(path: str, barrier, out) -> None:
    import asyncio

    from pgshard.store.sqlite import SQLiteStore

    async def main():
        barrier.wait()
        store = await SQLiteStore.open(path, timeout=10)
        await store.close()

    try:
        asyncio.run(main())
        out.put("ok")
    except Exception as exc:   # reported to the test, which fails on it
        out.put(f"{type(exc).__name__}: {exc}")


def test_many_processes_open_one_new_file(tmp_path):
    ctx = mp.get_context("spawn")
    for round_ in range(10):
        path = str(tmp_path / f"meta{round_}.db")
        n = 12
        barrier, out = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_open, args=(path, barrier, out)) for _ in range(n)]
        for p in procs:
            p.start()
        got = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        assert got == ["ok"] * n, got
