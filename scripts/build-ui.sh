#!/usr/bin/env bash
# Builds the web console (ui/) into pgshard/control/static/ui when the bundle is missing or
# older than its sources: `npm ci` when node_modules is missing or older than the lock file,
# then `npm run build`. Idempotent; `--force` rebuilds anyway.
set -euo pipefail
cd "$(dirname "$0")/.."

out=pgshard/control/static/ui/index.html
force=${1:-}

command -v npm >/dev/null 2>&1 || { echo "build-ui: npm is required (Node.js >= 20.19)" >&2; exit 1; }
node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)' \
  || { echo "build-ui: Node.js >= 20.19 is required for Vite 8 (found $(node --version))" >&2; exit 1; }

if [ ! -f ui/node_modules/.package-lock.json ] || [ ui/package-lock.json -nt ui/node_modules/.package-lock.json ]; then
  echo "build-ui: npm ci"
  (cd ui && npm ci --no-audit --no-fund --loglevel=error)
fi

stale=""
if [ ! -f "$out" ] || [ "$force" = "--force" ]; then
  stale=yes
elif [ -n "$(find ui/src ui/index.html ui/package.json ui/package-lock.json ui/vite.config.ts ui/tsconfig.json -newer "$out" -print -quit)" ]; then
  stale=yes
fi
if [ -n "$stale" ]; then
  echo "build-ui: npm run build"
  (cd ui && npm run build --silent)
  touch "$out"
fi
