# pgshard — the two commands the README opens with are `make run` and `make test`.
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= .demo
PYTEST_ARGS ?=

.PHONY: bootstrap run demo test unit bench bench-quick bench-instructions bench-2pc bench-failover bench-reshard lint clean ui regress

bootstrap:
	@scripts/bootstrap.sh

run demo: bootstrap
	$(BIN)/pgshard demo --data-dir $(DEMO_DIR) --shards 2 --replicas 1 --port 6432

test: bootstrap
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests

unit: bootstrap
	$(BIN)/python -m pytest -q tests/unit

# pgbench -S through pgshard vs PgBouncer vs direct: TPS, latency, the proxies' CPU us/query.
# A newer PgBouncer (1.21+, e.g. 1.25) gets its own column when PGSHARD_BENCH_PGBOUNCER_NEW
# names its binary (or pass BENCH_ARGS="--pgbouncer-new PATH"); it is skipped otherwise.
BENCH_ARGS ?=
bench: bootstrap
	$(BIN)/python -m bench.pgbench_compare $(BENCH_ARGS)
	$(BIN)/python -m bench.twophase_pgbench

# The same table in under 3 minutes: 3 s per run, 8 clients, scale 2.
bench-quick: bootstrap
	$(BIN)/python -m bench.pgbench_compare --quick --out bench/results-quick.json $(BENCH_ARGS)

# Instructions per query in the proxy (valgrind callgrind, repeatable on a busy box) for a
# fixed number of -M simple, extended and prepared queries, with the top functions.
INSTR_ARGS ?=
bench-instructions: bootstrap
	$(BIN)/python -m bench.instructions $(INSTR_ARGS)

# Two-phase commit through pgshard: a cross-shard pair of UPDATEs vs two single-shard
# transactions (8, 32 clients), single-shard -N with two_phase_commit on vs off.
# BENCH_2PC_ARGS e.g. "--quick" or "--modes simple".
BENCH_2PC_ARGS ?=
bench-2pc: bootstrap
	$(BIN)/python -m bench.twophase_pgbench $(BENCH_2PC_ARGS)

# Split a shard of 1M rows under fixed-rate writers: job time vs a plain COPY, write pause.
bench-reshard: bootstrap
	$(BIN)/python -m bench.reshard

# Failover time and acked writes lost (sync and async replication), switchover pause.
bench-failover: bootstrap
	$(BIN)/python -m bench.failover --reps 5

# PostgreSQL's own regression suite against a shard directly and through the proxy (session,
# transaction x4, transaction x1); gated by tests/regress/baseline.json. REGRESS_ARGS e.g.
# "--modes session" or "--no-gate"; scripts/regress.sh --help lists them.
REGRESS_ARGS ?=
regress: bootstrap
	scripts/regress.sh $(REGRESS_ARGS)

# The web console's bundle (npm ci + npm run build in ui/, into pgshard/control/static/ui).
ui:
	@scripts/build-ui.sh

lint: bootstrap
	$(BIN)/ruff check pgshard tests bench

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
