#!/usr/bin/env bash
# `make run`: finds or starts PostgreSQL, builds the release binary, migrates, and serves every
# target. Extra arguments go to `flatrender` (e.g. `scripts/run.sh migrate`).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${FLATRENDER_DATABASE_URL:-}" ]; then
  FLATRENDER_DATABASE_URL=$(scripts/postgres.sh database-url flatrender)
  export FLATRENDER_DATABASE_URL
fi
cargo build --release --locked -p flatrender >&2
if [ "${1:-}" = migrate ]; then
  exec target/release/flatrender migrate
fi
exec target/release/flatrender --migrate "$@"
