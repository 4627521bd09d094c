#!/usr/bin/env bash
# System packages the browser and docker test tiers need (Debian). Run as root; skips what is installed.
set -euo pipefail
want=(chromium docker.io debootstrap)
missing=()
for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "system-deps: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
