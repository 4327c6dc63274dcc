"""Several logical databases without servers: [[databases]] validation, the pool each
(shard, role, user, database) gets and its settings (database over [proxy], a user's own
pool_size over both), a reload that adds, changes or removes a database."""

from __future__ import annotations

import pytest

from pgshard.config import ConfigError, UserConfig, config_from_dict
from pgshard.protocol.errors import InvalidCatalogName
from pgshard.proxy.listener import Proxy
from pgshard.reload import apply, changes, merged
from pgshard.ring.catalog import Catalog, Shard

S0 = "postgresql://pgshard:pw@127.0.0.1:5001/app"
S1 = "postgresql://pgshard:pw@127.0.0.1:5002/app"


def config(*databases, **proxy):
    return config_from_dict({"proxy": {"pool_size": 5, **proxy},
                             "databases": list(databases),
                             "users": [{"name": "app", "password": "x"}]})


def make_proxy(cfg) -> Proxy:
    return Proxy(cfg, Catalog.initial([Shard("s0", S0), Shard("s1", S1)], {}))


@pytest.mark.parametrize("databases, message", [
    ([{"dbname": "x"}], "name is required"),
    ([{"name": "app"}], "is [proxy] database"),
    ([{"name": "pgshard"}], "admin console"),
    ([{"name": "a"}, {"name": "a", "dbname": "b"}], "names must be unique"),
    ([{"name": "a"}, {"name": "b", "dbname": "a"}], "same dbname"),
    ([{"name": "a", "pool_size": 0}], "pool_size must be an integer >= 1"),
    ([{"name": "a", "pool_size": True}], "pool_size must be an integer >= 1"),
    ([{"name": "a", "min_pool_size": 9}], "min_pool_size must not exceed pool_size"),
    ([{"name": "a", "pool_mode": "statement"}], "pool_mode must be one of"),
    ([{"name": "a", "shard_key": "id"}], "unknown setting(s) shard_key"),
    ([{"name": ""}], "name must be a non-empty string"),
])
def test_invalid_databases_are_refused(databases, message):
    with pytest.raises(ConfigError) as exc:
        config(*databases)
    assert message in str(exc.value)


def test_a_dbname_that_is_the_shards_own_database_is_refused():
    with pytest.raises(ConfigError, match="database of shard s0's DSN"):
        config_from_dict({"databases": [{"name": "other", "dbname": "app"}],
                          "shards": [{"name": "s0", "primary": S0}]})


def test_defaults_and_lookup():
    cfg = config({"name": "extra"}, {"name": "reports", "dbname": "reports_v2",
                                     "pool_size": 2, "pool_mode": "session"})
    extra, reports = cfg.database("extra"), cfg.database("reports")
    assert (extra.server_database, extra.pool_size, extra.pool_mode) == ("extra", None, None)
    assert reports.server_database == "reports_v2"
    assert cfg.database("app") is None and cfg.database("nope") is None
    assert config().databases == ()


def test_pools_are_kept_apart_per_database():
    proxy = make_proxy(config({"name": "extra", "pool_size": 1},
                              {"name": "reports", "dbname": "reports_v2", "min_pool_size": 2}))
    user = proxy.config.user("app")
    main = proxy.pool_for("s0", user)
    assert proxy.pool_for("s0", user, database="app") is main     # the main name: None
    extra = proxy.pool_for("s0", user, database="extra")
    reports = proxy.pool_for("s0", user, database="reports")
    replica_less = proxy.pool_for("s1", user, database="extra")
    assert len({id(main), id(extra), id(reports), id(replica_less)}) == 4
    assert (main.key.database, extra.key.database, reports.key.database) == \
        ("app", "extra", "reports_v2")
    assert extra.params == {"user": "pgshard", "database": "extra"}
    assert (main.settings.pool_size, extra.settings.pool_size, reports.settings.pool_size) == \
        (5, 1, 5)
    assert (extra.settings.min_pool_size, reports.settings.min_pool_size) == (0, 2)
    assert proxy.pool_for("s0", user, database="extra") is extra   # cached


def test_a_users_own_pool_size_wins_over_the_databases():
    proxy = make_proxy(config({"name": "extra", "pool_size": 3, "min_pool_size": 3}))
    own = UserConfig(name="own", password="x", pool_size=2)
    pool = proxy.pool_for("s0", own, database="extra")
    assert pool.key.client == "own" and pool.key.database == "extra"
    assert (pool.settings.pool_size, pool.settings.min_pool_size) == (2, 2)


def test_an_unknown_database_has_no_pool():
    proxy = make_proxy(config())
    with pytest.raises(InvalidCatalogName, match='database "ghost" does not exist'):
        proxy.pool_for("s0", None, database="ghost")


def test_a_catalog_dsn_on_the_same_dbname_is_refused_at_pool_time():
    cfg = config({"name": "other", "dbname": "app"})   # no [[shards]] in the file to check
    with pytest.raises(InvalidCatalogName) as exc:
        make_proxy(cfg).pool_for("s0", None, database="other")
    assert "names for the main database" in exc.value.message and "dbname of its own" in \
        exc.value.hint


def test_reload_adds_changes_and_removes_databases():
    old = config({"name": "extra", "pool_size": 4}, {"name": "gone"})
    new = config({"name": "extra", "pool_size": 2}, {"name": "fresh"})
    applied, restart = changes(old, new)
    assert "database fresh: added" in applied and "database gone: removed" in applied
    assert any(line.startswith("database extra: ") for line in applied) and restart == []
    proxy = make_proxy(old)
    pool = proxy.pool_for("s0", None, database="extra")
    run = merged(old, new)
    assert [d.name for d in run.databases] == ["extra", "fresh"]
    apply(proxy, run)
    assert pool.settings.pool_size == 2
    with pytest.raises(InvalidCatalogName):
        proxy.pool_for("s0", None, database="gone")
    assert proxy.pool_for("s0", None, database="fresh").key.database == "fresh"


def test_the_fd_budget_reserves_each_databases_pools():
    def budget(*databases):
        proxy = make_proxy(config(*databases))
        proxy.limits.nofile = (100000, 100000)
        return proxy.limits.budget()

    base = budget()
    # 2 shards, one pool set each: [proxy] pool_size 5 for extra, 2 for small.
    assert base - budget({"name": "extra"}) == 5 * 2
    assert base - budget({"name": "extra"}, {"name": "small", "pool_size": 2}) == (5 + 2) * 2
