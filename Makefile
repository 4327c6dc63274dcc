# pgshard — the two commands the README opens with are `make run` and `make test`.
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= .demo
PYTEST_ARGS ?=

.PHONY: bootstrap run demo test unit bench bench-2pc bench-failover bench-reshard lint clean ui regress

bootstrap:
	@scripts/bootstrap.sh

run demo: bootstrap
	$(BIN)/pgshard demo --data-dir $(DEMO_DIR) --shards 2 --replicas 1 --port 6432

test: bootstrap
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests

unit: bootstrap
	$(BIN)/python -m pytest -q tests/unit

bench: bootstrap
	$(BIN)/python -m bench.pgbench_compare
	$(BIN)/python -m bench.twophase_pgbench

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
