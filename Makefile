# Common tasks. Each target runs a command the README shows; the logic lives
# in scripts/, so nothing here is needed to do any of it by hand.

.DEFAULT_GOAL := help
TARGETS ?= monitor-data/websites_top100.csv

.PHONY: help setup build test lint run-monitor

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-12s %s\n", $$1, $$2}'

setup: ## Install the system packages the build and tests need
	scripts/setup.sh

build: setup ## Build every binary (release)
	cargo build --release --locked --bins

test: ## Run the whole test suite: fmt check, clippy -D warnings, all tests (what CI runs)
	scripts/test.sh

lint: ## fmt check and clippy with warnings as errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

run-monitor: ## Probe $(TARGETS) and print metrics as JSON lines (no Kafka needed)
	cargo run --release --locked --bin monitor -- --targets $(TARGETS) --output stdout
