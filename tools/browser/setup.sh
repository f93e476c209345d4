#!/usr/bin/env bash
# Idempotent setup of the browser kit: Chromium and Node.js from Debian (only when missing),
# node_modules from the lock file (only when missing or the lock changed), and dist/page.js
# (only when missing or its sources changed). Silent on success; errors go to stderr.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

# Runs a command with its output kept aside; shows it only when the command fails.
quiet() {
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup.sh: failed: $*" >&2
    exit 1
  fi
}

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    quiet $sudo env DEBIAN_FRONTEND=noninteractive apt-get update
    apt_updated=1
  fi
  quiet $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

# The runner uses $FLATRENDER_CHROMIUM or /usr/bin/chromium (Debian's package).
if [ -n "${FLATRENDER_CHROMIUM:-}" ]; then
  [ -x "$FLATRENDER_CHROMIUM" ] || { echo "setup.sh: FLATRENDER_CHROMIUM=$FLATRENDER_CHROMIUM is not executable" >&2; exit 1; }
elif [ ! -x /usr/bin/chromium ]; then
  apt_install chromium
fi

command -v node >/dev/null || apt_install nodejs npm
command -v npm >/dev/null || apt_install npm
# playwright-core 1.65 needs Node >= 20. Debian 12's own nodejs is 18: then Node 20 comes from
# the npm registry (the node-linux-<arch> package holds the official binary) into .runtime/,
# which the runner's callers put first on PATH (see services/flatrender/tests/browser.rs).
node_major() { node -p 'process.versions.node.split(".")[0]'; }
if [ "$(node_major)" -lt 20 ] && [ ! -x .runtime/bin/node ]; then
  case "$(uname -m)" in
    x86_64) arch=x64 ;;
    aarch64) arch=arm64 ;;
    *) echo "setup.sh: Node.js $(node --version) is too old and no Node 20 package exists for $(uname -m)" >&2; exit 1 ;;
  esac
  quiet npm install --prefix .runtime --no-audit --no-fund --no-save "node-linux-$arch@20.20.2"
  mkdir -p .runtime/bin
  ln -sfn "../node_modules/node-linux-$arch/bin/node" .runtime/bin/node
fi
if [ -x .runtime/bin/node ]; then
  PATH="$PWD/.runtime/bin:$PATH"
fi

# npm ci when node_modules is missing or was installed from another lock file.
lock_sum="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ ! -d node_modules ] || [ "$(cat node_modules/.lock.sha256 2>/dev/null)" != "$lock_sum" ]; then
  quiet npm ci --no-audit --no-fund
  echo "$lock_sum" >node_modules/.lock.sha256
fi

# Rebuild the bundle when it is missing or any of its inputs changed.
src_sum="$(cat src/*.js build.mjs package-lock.json | sha256sum | cut -d' ' -f1)"
if [ ! -f dist/page.js ] || [ "$(cat dist/.src.sha256 2>/dev/null)" != "$src_sum" ]; then
  quiet node build.mjs
  echo "$src_sum" >dist/.src.sha256
fi
