"""pgshard — a PostgreSQL sharding proxy."""

__version__ = "0.1.0"

from pgshard import compiled as _compiled  # noqa: E402  (before any hot module is imported)

_compiled.install_finder()
