"""Two-phase commit's pure parts: gids, decision records, fault specs, reply reading, the
client's error for a failed PREPARE, and the config switches."""

from __future__ import annotations

import pytest

from pgshard.config import ConfigError, config_from_dict
from pgshard.protocol import messages as m
from pgshard.protocol.errors import PgError
from pgshard.proxy.decisions import (
    Decision,
    decision_key,
    make_gid,
    parse_gid,
    quote_gid,
    router_part,
)
from pgshard.proxy.twophase import Faults, SimulatedCrash, _prepare_error, reply_result


@pytest.mark.parametrize("router, txn, shard, gid", [
    ("r1", 7, "shard0", "pgshard:r1:7:shard0"),
    ("host:6432/x", 12, "s", "pgshard:host_6432_x:12:s"),
    ("a'b", 1, "sh:with:colons", "pgshard:a_b:1:sh:with:colons"),
])
def test_gid_round_trip(router, txn, shard, gid):
    assert make_gid(router, txn, shard) == gid
    parts = parse_gid(gid)
    assert (parts.router, parts.txn_id, parts.shard) == (router_part(router), txn, shard)


@pytest.mark.parametrize("gid", ["someone-else", "pgshard:r:notanumber:s", "pgshard:r:1",
                                 "pgshardx:r:1:s"])
def test_foreign_gids_are_not_ours(gid):
    assert parse_gid(gid) is None


def test_gid_too_long_is_refused():
    with pytest.raises(ValueError, match="200 bytes"):
        make_gid("r" * 190, 1, "shard0")


@pytest.mark.parametrize("gid, literal", [("plain", "'plain'"), ("it's", "'it''s'")])
def test_quote_gid(gid, literal):
    assert quote_gid(gid) == literal


def test_decision_json_round_trip():
    d = Decision("r1", 5, {"shard0": "pgshard:r1:5:shard0"}, 1700000000.5, "abort")
    back = Decision.from_json(d.to_json(), revision=9)
    assert (back.router, back.txn_id, back.gids, back.decided_at, back.outcome, back.revision) \
        == ("r1", 5, d.gids, 1700000000.5, "abort", 9)
    assert d.key == decision_key("r1", 5) == "twophase/r1:5"
    with pytest.raises(ValueError):
        Decision.from_json(d.to_json().replace(b'"abort"', b'"maybe"'))


def test_faults_fire_at_the_nth_hit(monkeypatch):
    f = Faults("after_decision", at=2)
    f.reached("after_prepare")
    f.reached("after_decision")
    with pytest.raises(SimulatedCrash):
        f.reached("after_decision")
    monkeypatch.setenv("PGSHARD_2PC_FAULT", "during_commit@3")
    env = Faults.from_env()
    assert (env.point, env.at, env.exit) == ("during_commit", 3, True)
    with pytest.raises(ValueError):
        Faults("nowhere")


def frames(*raw: bytes) -> list[tuple[int, bytes]]:
    return [(r[0], r) for r in raw]


def test_reply_result():
    assert reply_result(frames(m.command_complete("PREPARE TRANSACTION"),
                               m.ready_for_query(b"I"))) == "PREPARE TRANSACTION"
    err = reply_result(frames(m.error_response("23505", "duplicate key", detail="Key (id)"),
                              m.ready_for_query(b"I")))
    assert isinstance(err, PgError) and (err.sqlstate, err.detail) == ("23505", "Key (id)")
    assert reply_result(frames(m.ready_for_query(b"I"))).sqlstate == "08P01"


def test_prepare_errors_name_the_shard():
    disabled = PgError("prepared transactions are disabled", sqlstate="55000",
                       hint="Set max_prepared_transactions to a nonzero value.")
    e = _prepare_error(["shard0", "shard1"], {"shard1": disabled})
    assert e.sqlstate == "55000" and "shard1" in e.message
    assert "max_prepared_transactions = 0" in e.message and "two_phase_commit" in e.hint
    e = _prepare_error(["shard0", "shard1"], {"shard0": "ROLLBACK"})
    assert e.sqlstate == "40000" and e.message.startswith("shard0: ")
    e = _prepare_error(["shard0", "shard1"], {"shard1": PgError("dup", sqlstate="23505")})
    assert (e.sqlstate, e.message) == ("23505", "shard1: dup")
    assert "nothing was committed on shard0" in e.detail


def test_config_switches():
    c = config_from_dict({})
    assert (c.proxy.two_phase_commit, c.proxy.twophase_recovery_interval,
            c.proxy.twophase_timeout) == (True, 10.0, 60.0)
    c = config_from_dict({"proxy": {"two_phase_commit": False, "twophase_timeout": 5}})
    assert c.proxy.two_phase_commit is False and c.proxy.twophase_timeout == 5
    for bad in ({"two_phase_commit": "yes"}, {"twophase_timeout": 0},
                {"twophase_recovery_interval": -1}, {"twophase_timeout": True}):
        with pytest.raises(ConfigError):
            config_from_dict({"proxy": bad})
