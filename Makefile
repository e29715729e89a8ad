# The doors in: `make demo`, `make test`, `make lint`. Each creates .venv and installs on first use.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The pinned JVM jars (delta-spark, spark-sql-kafka, hadoop-aws; the Kafka broker), resolved once
# from Maven Central into .jars/ (see pipelines/jvm.py); offline afterwards.
JARS   := .jars/.resolved

.PHONY: demo test test-fast test-chaos chaos lint format install check-java check-python clean

demo: check-java $(STAMP) $(JARS)
	$(BIN)/lakehouse demo

# Two pytest-xdist workers (each with its own SparkSession) share one Kafka broker; a worker
# takes the next test when it is free, long tests first, and a module whose tests share a lake
# built once stays in one piece (tests/conftest.py). The job-crash chaos run (a dozen JVMs) is
# left to `make chaos` / `make test-chaos`.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal

test: check-java $(STAMP) $(JARS)
	$(PYTEST) -m "not chaos"

test-fast: check-java $(STAMP) $(JARS)
	$(PYTEST) -m "not slow and not chaos"

# make test plus the quick job-crash chaos run (tests marked chaos).
test-chaos: check-java $(STAMP) $(JARS)
	$(PYTEST)

# The chaos suite, full size (docs/CHAOS.md): kill -9 the jobs, fail a broker of three over,
# restart the collector and the broker under SDK load, feed the collector a hostile corpus.
# Ends with a table and the lines `lost 0`, `duplicated 0`; exit 1 otherwise. `make test` runs
# a quick version of the edge parts (tests/streaming/test_chaos.py) and each job's crash points
# (test_bronze_crash.py, test_chaos_jobs.py); `make test-chaos` adds a quick job-crash run.
chaos: check-java $(STAMP) $(JARS)
	$(BIN)/lakehouse chaos

lint: $(STAMP)
	$(BIN)/ruff check pipelines tests
	$(BIN)/ruff format --check pipelines tests
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format pipelines tests
	$(BIN)/ruff check --fix pipelines tests

install: $(STAMP) $(JARS)

$(STAMP): requirements.txt pyproject.toml | check-python
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

$(JARS): pipelines/jvm.py | $(STAMP) check-java
	$(BIN)/python -m pipelines.jvm resolve
	@touch $(JARS)

check-python:
	@$(PYTHON) -c 'import sys; v = sys.version_info; sys.exit(0 if v[:2] == (3, 11) else f"Python 3.11 is required (found {v.major}.{v.minor} at {sys.executable}); install it or run: make PYTHON=/path/to/python3.11 ...")'

# Spark 4 needs Java 17 or newer; stop early with a clear message instead of a JVM stack trace.
check-java:
	@JAVA="$${JAVA_HOME:+$$JAVA_HOME/bin/}java"; \
	if ! command -v "$$JAVA" >/dev/null 2>&1; then \
	  echo "error: Java 17+ is required by Spark but 'java' was not found."; \
	  echo "  install it (Debian/Ubuntu: sudo apt-get install openjdk-17-jre-headless; macOS: brew install openjdk@17)"; \
	  echo "  or set JAVA_HOME to a JDK 17+ installation."; exit 1; fi; \
	version=$$("$$JAVA" -version 2>&1 | sed -n 's/.*version "\([0-9][0-9.]*\).*/\1/p' | head -n1); \
	major=$${version%%.*}; [ "$$major" = "1" ] && major=$$(echo "$$version" | cut -d. -f2); \
	if [ -z "$$major" ] || [ "$$major" -lt 17 ]; then \
	  echo "error: Java 17+ is required by Spark, but $$JAVA is version '$$version'."; \
	  echo "  install JDK 17 or newer and put it first on PATH (or set JAVA_HOME)."; exit 1; fi

clean:
	rm -rf $(VENV) .jars .pytest_cache .mypy_cache .ruff_cache lakehouse-data .pytest-lakehouse
