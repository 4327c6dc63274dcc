#!/usr/bin/env bash
# Prepares a fresh Debian machine for pgshard: system packages, then the .venv.
# Idempotent: every step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql postgresql-contrib)
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
command -v pgbench >/dev/null 2>&1 || need_apt+=(postgresql-contrib)
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || need_apt+=(pgbouncer)
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need_apt+=(etcd-client)
# The web console: Node.js builds it, Debian's Chromium runs its browser tests.
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
  # Debian starts a packaged cluster and etcd service; pgshard runs its own, so stop them.
  if command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl stop etcd postgresql pgbouncer >/dev/null 2>&1 || true
  fi
  $SUDO service etcd stop >/dev/null 2>&1 || true
  $SUDO service pgbouncer stop >/dev/null 2>&1 || true
fi

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.13 python3.12 python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 \
        && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PY=$cand; break
    fi
  done
fi
[ -n "$PY" ] || { echo "bootstrap: Python >= 3.11 is required" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.pgshard-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/pip install -q -e '.[test]'
  touch "$stamp"
fi

# The web console's bundle (pgshard/control/static/ui), rebuilt when missing or stale.
scripts/build-ui.sh
