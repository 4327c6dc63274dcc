"""What a config reload reports and keeps (pgshard.reload): no password in a line, start-time
settings kept until a restart, internal users kept."""

from __future__ import annotations

from pgshard.config import UserConfig, config_from_dict
from pgshard.reload import changes, merged


def cfg(**proxy):
    return config_from_dict({"proxy": {"port": 6432, **proxy},
                             "users": [{"name": "app", "password": "pw-one", "pool_size": 2}]})


def test_changes_name_what_changed_and_hide_passwords():
    old = cfg()
    new = config_from_dict({"proxy": {"port": 7000, "pool_size": 9, "client_idle_timeout": 5},
                            "log_level": "DEBUG",
                            "users": [{"name": "app", "password": "pw-two", "pool_size": 3},
                                      {"name": "bob", "password": "x"}]})
    applied, restart = changes(old, new)
    assert "proxy.pool_size: 20 -> 9" in applied
    assert "proxy.client_idle_timeout: 0.0 -> 5" in applied
    assert "log_level: 'INFO' -> 'DEBUG'" in applied
    assert "user bob: added" in applied
    assert "user app: password changed" in applied and "user app: pool_size 2 -> 3" in applied
    assert restart == ["proxy.port: 6432 -> 7000"]
    assert not any("pw-" in line for line in applied + restart)
    assert changes(old, cfg()) == ([], [])


def test_merged_keeps_start_time_settings_and_internal_users():
    old = cfg()
    old = old.__class__(**{**old.__dict__, "users": (*old.users, UserConfig("internal", "s"))})
    new = cfg(port=7000, pool_size=5)
    run = merged(old, new, keep_users=("internal",))
    assert run.proxy.port == 6432 and run.proxy.pool_size == 5
    assert [u.name for u in run.users] == ["app", "internal"]
