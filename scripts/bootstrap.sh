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

# The compiled hot path (Cython, setup.py) needs a C compiler and the Python headers.
if [ -z "${PGSHARD_PURE:-}" ]; then
  need_build=()
  command -v gcc >/dev/null 2>&1 || need_build+=(build-essential)
  "$PY" -c 'import os, sys, sysconfig
sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || need_build+=(python3-dev)
  if [ ${#need_build[@]} -gt 0 ]; then
    echo "bootstrap: installing Debian packages: ${need_build[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_build[@]}" >/dev/null
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.pgshard-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
    || [ setup.py -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/pip install -q -e '.[test]'
  touch "$stamp"
fi
# The editable install runs the compiled modules built beside the .py sources: rebuilt
# here when one is missing or older than its source (PGSHARD_PURE=1: none are built).
if [ -z "${PGSHARD_PURE:-}" ] && ! .venv/bin/python -c \
    'import sys; from pgshard.compiled import needs_build; sys.exit(bool(needs_build()))' \
    2>/dev/null; then
  echo "bootstrap: compiling the hot path (Cython) ..."
  .venv/bin/python setup.py -q build_ext --inplace -j 2 >/dev/null
fi

# The web console's bundle (pgshard/control/static/ui), rebuilt when missing or stale.
scripts/build-ui.sh
