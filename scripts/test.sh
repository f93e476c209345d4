#!/usr/bin/env bash
# `make test`: every test of the workspace against a real PostgreSQL that this script finds,
# starts or creates (see scripts/postgres.sh). Database tests make their own databases.
set -euo pipefail
cd "$(dirname "$0")/.."

FLATRENDER_TEST_DATABASE_URL=$(scripts/postgres.sh server-url)
export FLATRENDER_TEST_DATABASE_URL
echo "tests use PostgreSQL at $FLATRENDER_TEST_DATABASE_URL" >&2
cargo test --workspace --locked --all-targets "$@"
