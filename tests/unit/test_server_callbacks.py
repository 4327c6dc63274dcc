"""Everything a server connection calls back on (backend.ServerClient, a typing.Protocol)
implements the whole protocol with the protocol's parameters: the client session, the
stand-in for a client that left, a fan-out's collector and a streamed read's shard stream."""

from __future__ import annotations

import inspect

import pytest

from pgshard.proxy.attachment import Orphan
from pgshard.proxy.backend import ServerClient
from pgshard.proxy.client import ClientSession
from pgshard.proxy.scatter import Collector
from pgshard.proxy.shardstream import ShardStream

CALLBACKS = ["write", "server_idle", "server_drained", "server_lost", "server_error",
             "parse_failed", "server_param"]
IMPLEMENTERS = [ClientSession, Orphan, Collector, ShardStream]


def _params(fn) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values()][1:]   # without self


def test_the_protocol_is_a_typing_protocol_with_every_callback():
    assert getattr(ServerClient, "_is_protocol", False)
    assert set(CALLBACKS) == {n for n in vars(ServerClient)
                              if not n.startswith("_") and callable(getattr(ServerClient, n))}


@pytest.mark.parametrize("cls", IMPLEMENTERS, ids=lambda c: c.__name__)
def test_implementer_declares_the_protocol(cls):
    assert ServerClient in cls.__mro__   # (issubclass needs @runtime_checkable)


@pytest.mark.parametrize("cls", IMPLEMENTERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", CALLBACKS)
def test_callback_takes_the_protocols_arguments(cls, name):
    """The server passes these positionally: a callback the implementer overrides must
    take the same number of them (names may differ, `server` vs `s`)."""
    mine = getattr(cls, name)
    assert len(_params(mine)) == len(_params(getattr(ServerClient, name))), \
        f"{cls.__name__}.{name}{inspect.signature(mine)}"


def test_the_session_overrides_every_callback_itself():
    """The session is the one implementer that cares about every event: none of them may
    fall back to the protocol's no-op default."""
    for name in CALLBACKS:
        owner = next(k for k in ClientSession.__mro__ if name in vars(k))
        assert owner is ClientSession, f"ClientSession.{name} comes from {owner.__name__}"

