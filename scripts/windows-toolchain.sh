#!/usr/bin/env bash
# The cross toolchain for the agent's Windows build: Rust's x86_64-pc-windows-gnu standard library
# (rustup) and MinGW-w64's C compiler and linker (Debian's package; aws-lc-sys builds C).
# Idempotent; exits non-zero with a message when either cannot be installed.
set -euo pipefail

target=x86_64-pc-windows-gnu
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  rustup target add "$target" >&2 || { echo "cannot install the Rust target $target" >&2; exit 1; }
fi
if ! command -v x86_64-w64-mingw32-gcc >/dev/null; then
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd=sudo
  { $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-mingw-w64-x86-64 >&2 ||
    { $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
      $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-mingw-w64-x86-64 >&2; }; } ||
    { echo "cannot install MinGW-w64 (gcc-mingw-w64-x86-64)" >&2; exit 1; }
fi
