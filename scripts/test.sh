#!/usr/bin/env bash
# `make test`: every test of the workspace against a real PostgreSQL that this script finds,
# starts or creates (see scripts/postgres.sh). Database tests make their own databases.
set -euo pipefail
cd "$(dirname "$0")/.."

FLATRENDER_TEST_DATABASE_URL=$(scripts/postgres.sh server-url)
export FLATRENDER_TEST_DATABASE_URL
echo "tests use PostgreSQL at $FLATRENDER_TEST_DATABASE_URL" >&2

# openssl makes the certificates of the database TLS test.
if ! command -v openssl >/dev/null; then
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd=sudo
  $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >&2
fi

# ffmpeg (and a font for its text watermark) for the agent's assembly tests.
if ! command -v ffmpeg >/dev/null; then
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd=sudo
  $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg fonts-dejavu-core >&2
fi

# An off-the-shelf gRPC client (Python grpcio) for the tests that look at the server as an
# operator's tooling would.
venv=target/probe-venv
if [ ! -x "$venv/bin/python" ] || ! cmp -s scripts/probe-requirements.txt "$venv/requirements.txt"; then
  python3 -m venv "$venv" 2>/dev/null || {
    sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd=sudo
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >&2
    python3 -m venv "$venv"
  }
  "$venv/bin/pip" install -q --disable-pip-version-check -r scripts/probe-requirements.txt >&2
  cp scripts/probe-requirements.txt "$venv/requirements.txt"
fi
FLATRENDER_PROBE_PYTHON=$PWD/$venv/bin/python
export FLATRENDER_PROBE_PYTHON
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary, many of them empty).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
