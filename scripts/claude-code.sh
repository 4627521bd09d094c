#!/usr/bin/env bash
# Claude Code for the agent tests (tests/test_agents.py), from its npm lock (locks/claude-code) into
# .hub/claude-code ($HUB_STATE_DIR overrides .hub). Idempotent: an install that matches the lock is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${HUB_STATE_DIR:-.hub}/claude-code"
if ! command -v npm >/dev/null; then
  echo "claude-code: installing Node.js and npm (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
mkdir -p "$dest"
if cmp -s locks/claude-code/package-lock.json "$dest/package-lock.json" && "$dest/node_modules/.bin/claude" --version \
    >/dev/null 2>&1; then
  echo "claude-code: up to date ($("$dest/node_modules/.bin/claude" --version))"
  exit 0
fi
cp locks/claude-code/package.json locks/claude-code/package-lock.json "$dest/"
(cd "$dest" && npm ci --no-audit --no-fund --loglevel=error)
# The package's postinstall puts the platform's native binary in place of its stub; run it if npm did not.
if ! "$dest/node_modules/.bin/claude" --version >/dev/null 2>&1; then
  (cd "$dest/node_modules/@anthropic-ai/claude-code" && node install.cjs)
fi
echo "claude-code: $("$dest/node_modules/.bin/claude" --version)"
