"""ShardStream (frames held as they arrive, the server paused past a budget) and
RowWindow (OFFSET/LIMIT/DISTINCT over streamed rows), as table tests without servers."""

from __future__ import annotations

import struct

import pytest

from pgshard.protocol import messages as m
from pgshard.protocol import values as pv
from pgshard.proxy.shardstream import ShardStream, Wakeup, _without_rows
from pgshard.sql.fanout_plan import MergeSpec
from pgshard.sql.merge import Merger, RowWindow, decode_row, encode_row


class _Transport:
    """Records what the stream asks of the server's socket."""

    def __init__(self):
        self.paused = False
        self.calls = []

    def pause_reading(self):
        self.paused = True
        self.calls.append("pause")

    def resume_reading(self):
        self.paused = False
        self.calls.append("resume")

    def is_closing(self):
        return False


class _Server:
    def __init__(self):
        self.transport = _Transport()


def _row(i: int, pad: int = 0) -> bytes:
    return encode_row([str(i).encode(), b"p" * pad])


def _stream(budget: int = 1000):
    server = _Server()
    return ShardStream(None, server, budget, Wakeup()), server.transport


def test_frames_come_out_whole_and_in_order_across_chunks():
    st, _ = _stream()
    rows = [_row(i) for i in range(5)]
    st.write(rows[0] + rows[1])
    st.write(rows[2])
    st.write(rows[3] + rows[4] + m.command_complete("SELECT 5"))
    got = []
    while st.peek() == 0x44:
        got.append(st.pop())
    assert got == rows
    assert st.peek() == 0x43 and st.pop() == m.command_complete("SELECT 5")
    assert st.peek() is None and st.buffered == 0


@pytest.mark.parametrize("most, want", [(None, 3), (2, 2), (1, 1)])
def test_pop_rows_takes_one_run_of_datarows(most, want):
    st, _ = _stream()
    rows = [_row(i) for i in range(3)]
    st.write(b"".join(rows) + m.command_complete("SELECT 3"))
    run, n = st.pop_rows(most)
    assert n == want and run == b"".join(rows[:want])
    if want < 3:
        assert st.pop_rows(None) == (b"".join(rows[want:]), 3 - want)
    assert st.pop_rows(None) == (b"", 0) and st.peek() == 0x43


def test_pauses_past_budget_and_resumes_at_half():
    st, tr = _stream(budget=1000)
    row = _row(1, pad=200)           # ~220 bytes a frame
    for _ in range(4):
        st.write(row)
    assert not tr.paused             # 880 bytes: under the budget
    st.write(row)
    assert tr.paused and st.buffered > 1000
    st.pop()
    st.pop()
    assert tr.paused                 # 660 left: more than half the budget
    st.pop()
    assert not tr.paused and tr.calls == ["pause", "resume"]
    assert st.peak == 5 * len(row)


def test_drop_rows_keeps_the_end_of_the_reply_and_resumes():
    st, tr = _stream(budget=500)
    for i in range(5):
        st.write(_row(i, pad=200))
    assert tr.paused
    st.write(m.command_complete("SELECT 9"))
    st.drop_rows()
    assert not tr.paused and st.peek() == 0x43
    st.write(_row(7) + m.ready_for_query(b"I"))    # later rows are dropped on arrival
    assert st.pop() == m.command_complete("SELECT 9")
    assert st.peek() == 0x5A


def test_drop_all_and_close_never_leave_the_server_paused():
    st, tr = _stream(budget=100)
    st.write(_row(1, pad=300))
    assert tr.paused
    st.drop_all()
    assert not tr.paused and st.peek() is None
    st.write(_row(2))
    assert st.peek() is None         # discarded
    st2, tr2 = _stream(budget=100)
    st2.write(_row(1, pad=300))
    st2.close()
    assert not tr2.paused


def test_idle_and_lost():
    st, _ = _stream()
    st.write(m.ready_for_query(b"I"))
    st.server_idle(None)
    assert st.idle and not st.ended
    st.pop()
    assert st.ended
    st2, _ = _stream()
    st2.server_lost(None, "gone")
    assert st2.ended and st2.lost.sqlstate == "08006"


def test_without_rows():
    cc = m.command_complete("SELECT 2")
    assert _without_rows(_row(1) + _row(2) + cc) == cc
    assert _without_rows(cc) == cc
    assert _without_rows(_row(1)) == b""


# -- RowWindow -------------------------------------------------------------------------------

def _vals(msgs):
    return [decode_row(x[5:])[0] for x in msgs if x is not None]


@pytest.mark.parametrize("offset, limit, want", [
    (0, None, [0, 1, 2, 3, 4, 5]),
    (2, None, [2, 3, 4, 5]),
    (0, 3, [0, 1, 2]),
    (1, 2, [1, 2]),
    (6, 1, []),
    (0, 0, []),
])
def test_window_offset_limit(offset, limit, want):
    w = RowWindow(offset, limit, 1, 1)
    out = []
    for i in range(6):
        if w.full:
            break
        out.append(w.take([str(i).encode()]))
    assert _vals(out) == [str(i).encode() for i in want]
    assert w.count == len(want)
    assert w.full == (limit is not None and len(want) == limit)


def test_window_reuses_the_shards_frame_unless_columns_are_hidden():
    frame = encode_row([b"1", b"2"])
    assert RowWindow(0, None, 2, 2).take([b"1", b"2"], frame) is frame
    hidden = RowWindow(0, None, 1, 2)
    assert hidden.needs_values and hidden.take([b"1", b"2"], frame) == encode_row([b"1"])


def test_window_bulk_only_when_rows_need_no_look():
    assert RowWindow(0, None, 1, 1).bulk() is None
    w = RowWindow(0, 10, 1, 1)
    assert w.bulk() == 10
    w.took(4)
    assert w.bulk() == 6 and w.count == 4
    assert RowWindow(2, 10, 1, 1).bulk() == 0           # OFFSET still skipping
    assert RowWindow(0, 10, 1, 2).bulk() == 0           # a hidden column to drop
    m8 = Merger(MergeSpec(distinct=True), [("v", pv.INT8, 1)])
    assert m8.window().bulk() == 0                      # DISTINCT looks at every row


def test_window_distinct_then_offset_limit_as_postgres_orders_them():
    merger = Merger(MergeSpec(distinct=True, offset=1, limit=2), [("v", pv.INT8, 1)])
    w = merger.window()
    vals = [3, 3, 5, 5, 7, 9, 11]
    out = []
    for v in vals:
        if w.full:
            break
        out.append(w.take([struct.pack("!q", v)]))
    assert [struct.unpack("!q", x)[0] for x in _vals(out)] == [5, 7]


def test_streamed_kway_equals_finish():
    """Merger.row/sort_key/window (the streamed path) give what add/finish give."""
    import heapq
    import random
    rnd = random.Random(7)
    spec = MergeSpec(order_by=((0, True, None),), limit=25, offset=3)
    cols = [("v", pv.INT8, 1)]
    shards = [sorted((rnd.randrange(100) for _ in range(20)), reverse=True) for _ in range(3)]
    whole = Merger(spec, cols)
    for i, vs in enumerate(shards):
        for v in vs:
            whole.add(i, encode_row([struct.pack("!q", v)])[5:])
    streamed = Merger(spec, cols)
    w = streamed.window()
    heap = []
    iters = [iter(vs) for vs in shards]

    def pull(i):
        v = next(iters[i], None)
        if v is not None:
            row = streamed.row(encode_row([struct.pack("!q", v)])[5:])
            heapq.heappush(heap, (streamed.sort_key(row), i, v, row))

    for i in range(3):
        pull(i)
    out = []
    while heap and not w.full:
        _, i, _, row = heapq.heappop(heap)
        msg = w.take(row)
        if msg is not None:
            out.append(msg)
        pull(i)
    assert out == whole.finish()
