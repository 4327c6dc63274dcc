"""The pure parts of `serve --workers N`: the worker in a BackendKeyData process id, the
restart delay, the worker's environment, the [proxy] workers setting and the metrics merge."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pgshard.config import ConfigError, config_from_dict
from pgshard.control.metrics_merge import merge
from pgshard.worker_link import PID_LIMIT, WorkerInfo, encode_pid, new_pid, worker_of
from pgshard.workers import RESTART_DELAY_MAX, check_workers, restart_delay


@pytest.mark.parametrize("rand", [0, 1, 2, 3, 63, 64, 2 ** 31 - 1, 2 ** 31 - 2, 12345678])
@pytest.mark.parametrize("index,count", [(0, 2), (1, 2), (0, 3), (2, 3), (5, 8), (63, 64)])
def test_pid_carries_the_worker(rand, index, count):
    pid = encode_pid(rand, index, count)
    assert 0 < pid <= PID_LIMIT
    assert worker_of(pid, count) == index


@pytest.mark.parametrize("rand,expected", [(0, 1), (5, 5), (2 ** 31 - 1, 1)])
def test_single_worker_pids_are_any_positive_int32(rand, expected):
    assert encode_pid(rand, 0, 1) == expected
    assert worker_of(expected, 1) == 0


def test_new_pids_vary_and_stay_with_their_worker():
    pids = {new_pid(1, 3) for _ in range(50)}
    assert len(pids) > 40 and {worker_of(p, 3) for p in pids} == {1}


@pytest.mark.parametrize("failures,delay", [(0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0),
                                            (6, 30.0), (50, RESTART_DELAY_MAX)])
def test_restart_delay_doubles_up_to_a_limit(failures, delay):
    assert restart_delay(failures) == delay


def test_worker_info_from_env(tmp_path):
    assert WorkerInfo.from_env({}) is None
    info = WorkerInfo.from_env({"PGSHARD_WORKER_INDEX": "1", "PGSHARD_WORKERS": "3",
                                "PGSHARD_WORKER_DIR": str(tmp_path), "PGSHARD_WORKER_PORT": ""})
    assert (info.index, info.count, info.run_dir, info.port) == (1, 3, Path(tmp_path), None)
    assert info.socket_path() == tmp_path / "worker-1.sock"
    assert info.socket_path(2) == tmp_path / "worker-2.sock"
    assert info.node_id("host-1-abc") == "host-1-abc-w1"
    (tmp_path / "execute-password").write_text("pw\n")
    assert info.exec_password() == "pw"


@pytest.mark.parametrize("value,ok", [(1, True), (2, True), (64, True), (0, False),
                                      (65, False), (True, False), ("2", False), (1.5, False)])
def test_workers_setting(value, ok):
    data = {"proxy": {"workers": value}}
    if ok:
        assert config_from_dict(data).proxy.workers == value
    else:
        with pytest.raises(ConfigError, match="workers"):
            config_from_dict(data)


def test_workers_refuse_a_private_store():
    with pytest.raises(SystemExit, match="share"):
        check_workers(config_from_dict({"store": "sqlite://:memory:"}), 2)
    check_workers(config_from_dict({"store": "sqlite:///tmp/x.db"}), 2)


def _worker_text(connections: int, version: int, lag: float, leader: int) -> bytes:
    r = CollectorRegistry()
    Counter("pgshard_queries", "q", ["shard"], registry=r).labels("s0").inc(connections * 10)
    Counter("pgshard_client_connections_accepted", "a", registry=r).inc(connections)
    Gauge("pgshard_client_connections", "c", registry=r).set(connections)
    h = Histogram("pgshard_query_duration_seconds", "h", ["shard"], registry=r,
                  buckets=(0.1, 1.0))
    for _ in range(connections):
        h.labels("s0").observe(0.5)
    Gauge("pgshard_catalog_version", "v", registry=r).set(version)
    Gauge("pgshard_pool_servers", "p", ["shard"], registry=r).labels("s0").set(connections)
    Gauge("pgshard_replica_lag_seconds", "l", registry=r).set(lag)
    Gauge("pgshard_manager_leader", "m", registry=r).set(leader)
    return generate_latest(r)


def _samples(text: bytes) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text.decode()) for s in fam.samples}


@pytest.mark.parametrize("name,labels,value", [
    ("pgshard_queries_total", (("shard", "s0"),), 70.0),             # counters: summed
    ("pgshard_client_connections_accepted_total", (), 7.0),
    ("pgshard_query_duration_seconds_count", (("shard", "s0"),), 7.0),   # histograms too
    ("pgshard_query_duration_seconds_bucket", (("le", "1.0"), ("shard", "s0")), 7.0),
    ("pgshard_query_duration_seconds_bucket", (("le", "0.1"), ("shard", "s0")), 0.0),
    ("pgshard_pool_servers", (("shard", "s0"),), 7.0),               # per-router gauges: summed
    ("pgshard_client_connections", (), 7.0),
    ("pgshard_catalog_version", (), 5.0),                            # the oldest one served
    ("pgshard_replica_lag_seconds", (), 2.5),                        # state: the largest
    ("pgshard_manager_leader", (), 1.0),
    ("pgshard_worker_client_connections_accepted_total", (("worker", "0"),), 3.0),
    ("pgshard_worker_client_connections_accepted_total", (("worker", "1"),), 4.0),
    ("pgshard_worker_client_connections", (("worker", "1"),), 4.0),
    ("pgshard_worker_up", (("worker", "0"),), 1.0),
    ("pgshard_worker_up", (("worker", "2"),), 0.0),                  # did not answer
])
def test_merge(name, labels, value):
    merged = _samples(merge({0: _worker_text(3, 5, 2.5, 1), 1: _worker_text(4, 6, 1.0, 0),
                             2: None}))
    assert merged[(name, labels)] == value


def test_merge_keeps_the_earliest_created_timestamp():
    a, b = _worker_text(1, 1, 0, 0), _worker_text(1, 1, 0, 0)
    created = [_samples(t)[("pgshard_queries_created", (("shard", "s0"),))] for t in (a, b)]
    merged = _samples(merge({0: a, 1: b}))
    assert merged[("pgshard_queries_created", (("shard", "s0"),))] == min(created)


async def test_a_reserved_port_is_shared_by_every_worker_listener():
    """[proxy] port = 0: the parent holds a port (bound, not listening) that each worker's
    SO_REUSEPORT listener binds too; connections reach the listeners, never the holder."""
    import asyncio
    import socket

    from pgshard.proxy.listener import _bind
    from pgshard.workers import _reserve_port

    held, port = _reserve_port("127.0.0.1")
    listeners = [await _bind("127.0.0.1", port, reuse_port=True) for _ in range(2)]
    try:
        assert all(s[0].getsockname()[1] == port for s in listeners)
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(32)]
        await asyncio.sleep(0.05)
        accepted = []
        for socks in listeners:
            n = 0
            while True:
                try:
                    socks[0].accept()[0].close()
                    n += 1
                except BlockingIOError:
                    break
            accepted.append(n)
        assert sum(accepted) == 32 and min(accepted) > 0, accepted
        for c in clients:
            c.close()
    finally:
        for socks in listeners:
            for s in socks:
                s.close()
        held.close()
