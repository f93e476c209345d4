# FlatRender — the two set-up commands are `make run` and `make test`; both prepare the machine
# themselves (PostgreSQL, client tools) on a fresh Debian or Ubuntu.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export FLATRENDER_DATA_DIR ?= .data

.PHONY: help run test lint bench migrate fmt build

help: ## Show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

run: ## Start every service and the gateway (gRPC + grpc-web on 127.0.0.1:50051) on defaults
	@scripts/run.sh

test: ## Run every test against real PostgreSQL (each database test on a fresh database)
	@scripts/test.sh

lint: ## rustfmt check, clippy -D warnings, buf lint of proto/
	@scripts/lint.sh

bench: ## Run the benchmarks; method and figures are in BENCHMARKS.md
	@scripts/bench.sh

migrate: ## Apply pending migrations to $FLATRENDER_DATABASE_URL (or the local database)
	@scripts/run.sh migrate

fmt: ## Format the Rust code
	@cargo fmt --all

build: ## Build the release binary
	@cargo build --release --locked -p flatrender
