#!/usr/bin/env bash
# `make bench`: runs every benchmark against a real PostgreSQL and prints Markdown tables for
# BENCHMARKS.md. Benchmarks are built with the release profile.
set -euo pipefail
cd "$(dirname "$0")/.."

FLATRENDER_TEST_DATABASE_URL=$(scripts/postgres.sh server-url)
export FLATRENDER_TEST_DATABASE_URL
# The dispatch benchmark runs pgbench beside itself as its reference.
FLATRENDER_PGBENCH=$(scripts/postgres.sh pgbench)
export FLATRENDER_PGBENCH
cargo bench --locked -p flatrender --bench startup
cargo bench --locked -p flatrender --bench file_transfer
cargo bench --locked -p flatrender --bench gateway
cargo bench --locked -p flatrender-render --bench dispatch
cargo bench --locked -p flatrender-agent --bench agent
