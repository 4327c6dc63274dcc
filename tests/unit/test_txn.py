"""TxnState: the one transaction status a session reports."""

from __future__ import annotations

import pytest

from pgshard.proxy.txn import TxnState


class Server:
    def __init__(self, status: bytes):
        self.txn_status = status


class Multi:
    def __init__(self, failed: bool):
        self.failed = failed


@pytest.mark.parametrize("pending, failed, multi, server, status, held", [
    (None, False, None, None, b"I", None),
    (None, False, None, Server(b"T"), b"T", None),
    (None, False, None, Server(b"E"), b"E", None),
    ("BEGIN", False, None, None, b"T", b"T"),
    ("BEGIN", False, None, Server(b"I"), b"T", b"T"),   # a server that only looked
    ("BEGIN", True, None, Server(b"I"), b"E", b"E"),
    (None, False, Multi(False), Server(b"I"), b"T", None),
    (None, False, Multi(True), None, b"E", None),
])
def test_status(pending, failed, multi, server, status, held):
    t = TxnState()
    t.pending, t.failed, t.multi = pending, failed, multi
    assert t.status(server) == status and t.held() == held


def test_hold_fail_open():
    t = TxnState()
    t.fail()                       # nothing held: nothing to fail
    assert not t.failed
    t.hold("BEGIN ISOLATION LEVEL SERIALIZABLE")
    t.fail()
    assert t.status(None) == b"E"
    t.opened()
    assert t.status(None) == b"I" and t.held() is None and not t.failed
