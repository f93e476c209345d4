#!/usr/bin/env bash
# `make lint`: formatting, clippy with warnings as errors (also on the agent's Windows build), and
# buf lint (buf from npm, pinned in tools/package-lock.json).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked --features flatrender-kit/testing -- -D warnings
# The agent's Windows-only code (the service, Job Objects, crash-dump folders) compiled and
# linted for Windows, so it cannot rot unseen. Skipped, loudly, where the cross toolchain cannot be
# installed (no route to rustup's server).
if scripts/windows-toolchain.sh; then
  cargo clippy --target x86_64-pc-windows-gnu -p flatrender-agent --locked -- -D warnings
else
  echo "lint: WARNING: the agent's Windows build was not checked (no cross toolchain)" >&2
fi
if [ ! -x tools/node_modules/.bin/buf ]; then
  if ! command -v npm >/dev/null; then
    sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd=sudo
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >&2
  fi
  npm ci --prefix tools --no-audit --no-fund >&2
fi
tools/node_modules/.bin/buf lint proto
echo "lint: ok"
