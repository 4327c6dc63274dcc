"""The switchover progress record and the rule a new manager follows for one half done."""

from __future__ import annotations

import pytest

from pgshard.control.switchover_state import (
    CLEANUP,
    FINISH,
    PHASES,
    ROLLBACK,
    Progress,
    key,
    resume_plan,
)

OLD, NEW, OTHER = "postgresql://u:p@h:1/app", "postgresql://u:p@h:2/app", "postgresql://u:p@h:3/app"
P = Progress("shard0", OLD, NEW, "holding", "manager-a", 1000.0)


@pytest.mark.parametrize("phase, promoted, catalog_primary, plan", [
    # Before pg_promote may have run the old primary holds every write: roll back.
    ("holding", False, OLD, ROLLBACK),
    ("held", False, OLD, ROLLBACK),
    ("demoted", False, OLD, ROLLBACK),
    # pg_promote may have run: the target may be on a new timeline, go forward.
    ("promoting", False, OLD, FINISH),
    ("promoting", True, OLD, FINISH),
    # A target found promoted in an earlier phase is never rolled back over.
    ("held", True, OLD, FINISH),
    ("demoted", True, OLD, FINISH),
    # Already published, or the shard moved on by other means: only clean up.
    ("promoting", True, NEW, CLEANUP),
    ("published", True, NEW, CLEANUP),
    ("published", True, OLD, CLEANUP),
    ("held", False, OTHER, CLEANUP),
    ("demoted", True, OTHER, CLEANUP),
])
def test_resume_plan(phase, promoted, catalog_primary, plan):
    assert resume_plan(phase, promoted, catalog_primary, P.at(phase)) == plan


def test_progress_round_trip():
    p = P.at("promoting", final_lsn="0/3000060", demoted="stopped")
    assert Progress.from_bytes(p.to_bytes()) == p
    assert b'"from": "postgresql://u:p@h:1/app"' in p.to_bytes()
    assert key("shard0") == "switchovers/shard0"
    assert PHASES.index("held") < PHASES.index("demoted") < PHASES.index("promoting")
    with pytest.raises(ValueError, match="unknown switchover phase"):
        P.at("flipped")
