"""Benchmarks: pgbench through pgshard, PgBouncer and straight to Postgres (`make bench`)."""
