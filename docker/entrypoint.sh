#!/bin/sh
# Container entrypoint: `serve [ARGS]` renders $PGSHARD_CONFIG (placeholders from the
# environment) into a private file and runs `pgshard serve --config it ARGS`; anything else
# runs as a pgshard subcommand (e.g. `shards list`).
set -eu
if [ "${1:-serve}" = "serve" ]; then
  [ $# -gt 0 ] && shift
  rendered="${PGSHARD_RENDERED_CONFIG:-${TMPDIR:-/tmp}/pgshard.toml}"
  umask 077
  pgshard-render-config "${PGSHARD_CONFIG:-/etc/pgshard/pgshard.toml}" > "$rendered"
  exec pgshard serve --config "$rendered" "$@"
fi
exec pgshard "$@"
