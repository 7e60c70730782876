# Common tasks. Each target runs a command the README shows; the logic lives
# in scripts/ and the binaries, so nothing here is needed to do any of it by hand.

.DEFAULT_GOAL := help
# A site list for `make demo` and `make run-monitor`; empty means the demo's local sites.
TARGETS ?=
# Arguments of `make bench` (scripts/bench.sh), e.g. --full or "--scenario schedule".
ARGS ?=
# `docker compose` where the plugin exists, else the older `docker-compose`.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

.PHONY: help setup build demo test lint bench bench-writes soak fuzz run-monitor run-consumer run-status up down docker-test

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-13s %s\n", $$1, $$2}'

setup: ## Install the system packages the build and tests need
	scripts/setup.sh

build: setup ## Build every binary (release)
	cargo build --release --locked --bins

demo: ## Run the whole pipeline locally with the status page and a live status table; Ctrl-C stops it (TARGETS=file for real sites)
	scripts/demo.sh $(TARGETS)

test: ## Run the whole test suite: fmt check, clippy -D warnings, all tests (what CI runs)
	scripts/test.sh

lint: ## fmt check and clippy with warnings as errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

bench: ## Benchmarks of the pipeline against its goals, quick set (a few minutes); ARGS=--full for the full run, ARGS="--scenario NAME" for one
	scripts/bench.sh $(ARGS)

bench-writes: ## The consumer's write-path micro-benchmark (COPY vs INSERT into PostgreSQL)
	cargo bench -p sitewatch-consumer --bench write_path

soak: ## Monitor and two consumers at 1,000 probes/s for 10 minutes under faults (SIGKILLs, PostgreSQL restarts, a broker outage); ARGS="--soak-minutes N"
	scripts/bench.sh --scenario soak $(ARGS)

fuzz: ## Fuzz the site-list parsers and the message decoder (cargo fuzz, nightly), FUZZ_SECONDS each (default 60)
	scripts/fuzz.sh

run-monitor: ## Probe TARGETS (default monitor-data/websites_top100.csv) and print metrics as JSON lines (no Kafka needed)
	cargo run --release --locked --bin monitor -- --targets $(or $(TARGETS),monitor-data/websites_top100.csv) --output stdout

run-consumer: ## Run one consumer with the SITEWATCH_* environment (see consumer --help)
	cargo run --release --locked --bin consumer

run-status: ## Serve the status page on 0.0.0.0:8080 with the SITEWATCH_POSTGRES_* environment (see status --help)
	cargo run --release --locked --bin status

up: ## Start the pipeline with Docker Compose (Kafka, PostgreSQL, monitor, consumer, status page on 127.0.0.1:8080)
	$(COMPOSE) up -d --build

down: ## Stop and remove the Compose stack (data volume kept)
	$(COMPOSE) down

docker-test: ## Build the images offline and test the Compose stack on this machine's Docker engine
	scripts/docker/test-compose.sh
