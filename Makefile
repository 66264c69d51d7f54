# Two commands: `make run` serves the API (SQLite by default), `make test` runs every check.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: run test lint typecheck pytest migrate bench chart bench-ab bench-scale bench-transfers bench-sqlite bench-replicas bench-instructions compare clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/asyncblog migrate
	$(BIN)/asyncblog serve --host $(HOST) --port $(PORT)

migrate: $(STAMP)
	$(BIN)/asyncblog migrate

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# The browser test drives Debian's chromium (tests/api/test_docs_browser.py); without it (no
# apt-get, no root) that test is skipped with the reason, and fails under CI=true.
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	-command -v apt-get >/dev/null && (apt-get install -y --no-install-recommends chromium \
		|| (apt-get update && apt-get install -y --no-install-recommends chromium))

# The PgBouncer tests start Debian's pgbouncer (tests/fixtures/pgbouncer.py); without it they
# are skipped with the reason, and fail under CI=true.
PGBOUNCER ?= /usr/sbin/pgbouncer
$(PGBOUNCER):
	-command -v apt-get >/dev/null && (apt-get install -y --no-install-recommends pgbouncer \
		|| (apt-get update && apt-get install -y --no-install-recommends pgbouncer))

# Two processes (pytest-xdist), a test module's tests together in one: each process has its own
# databases, schema and throwaway cluster. TEST_WORKERS=0 runs in this process alone.
TEST_WORKERS ?= 2
pytest: $(STAMP) | $(CHROMIUM) $(PGBOUNCER)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test: lint typecheck pytest

# the bench extra (matplotlib) draws the charts; the measuring scripts need only the venv
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# redraws bench.png/.svg (and compare.png/.svg) of a run; RESULTS defaults to the newest run
RESULTS ?= $(patsubst %/results.json,%,$(lastword $(sort $(wildcard bench-results/bench_*/results.json))))
chart: $(BENCH_STAMP)
	@test -n "$(RESULTS)" || { echo "no bench-results/bench_*/results.json: run make bench first" >&2; exit 1; }
	$(BIN)/python bench/chart.py $(RESULTS) $(CHART_ARGS)

# what a setting costs: two servers differing only in it, alternating (default: METRICS=true)
bench-ab: $(STAMP)
	$(BIN)/python bench/ab.py $(BENCH_ARGS)

# GET /users/{id} on 1 and on 2 worker processes, one after the other
bench-scale: $(STAMP)
	$(BIN)/python bench/scale.py $(BENCH_ARGS)

bench-transfers: $(STAMP)
	$(BIN)/python bench/transfers.py $(BENCH_ARGS)

bench-sqlite: $(STAMP)
	$(BIN)/python bench/sqlite.py $(BENCH_ARGS)

# instructions per request on the event loop's thread, in process, under valgrind's callgrind:
# repeatable where requests/s are not (BENCH_ARGS="--bare" for raw aiosqlite, "--route /users/{}")
bench-instructions: $(STAMP)
	command -v valgrind >/dev/null || apt-get install -y valgrind
	$(BIN)/python bench/instructions.py $(BENCH_ARGS)

# read-your-writes on a throwaway cluster and a streaming replica (as root: pg_createcluster)
bench-replicas: $(STAMP)
	$(BIN)/python bench/replicas.py $(BENCH_ARGS)

compare: $(STAMP)
	command -v wrk >/dev/null || apt-get install -y wrk
	../shared/bench/compare.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
