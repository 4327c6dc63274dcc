"""Shared pytest fixtures: session-wide local PostgreSQL clusters (integration tests)."""

from __future__ import annotations

import pytest

from tests.fixtures.clusters import temp_cluster

# Tests that request one of these fixtures need real PostgreSQL servers.
CLUSTER_FIXTURES = frozenset({"pg_cluster", "pg_cluster3"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        uses_cluster = CLUSTER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if uses_cluster or "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def pg_cluster():
    """2 shards x (1 primary + 1 streaming replica), created once per test session."""
    with temp_cluster(shards=2, replicas=1) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def pg_cluster3():
    """3 shards x 1 primary, no replicas; created only when a test asks for it."""
    with temp_cluster(shards=3, replicas=0) as cluster:
        yield cluster
