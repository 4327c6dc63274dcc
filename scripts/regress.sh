#!/usr/bin/env bash
# `make regress`: PostgreSQL's own regression suite against a shard and through the proxy.
#
# Prepares everything on a fresh Debian machine, caching it under .regress/ (git-ignored):
#   1. the upstream source of the installed server's exact version, with Debian's own
#      client (`apt-get source`, from a private deb-src list in .regress/apt: the system's
#      apt configuration is left alone), unpacked to .regress/src/postgresql-X.Y/
#      (only src/test/regress and contrib/spi);
#   2. postgresql-server-dev-MAJOR (PGXS) with apt-get when it is missing;
#   3. regress.so, autoinc.so and refint.so built with PGXS into .regress/lib/X.Y/;
# then runs tests/regress/run.py (every argument is passed on: --help lists them), which
# prints the table and the proxy-caused differences, writes .regress/summary.json and
# exits non-zero when the gate in tests/regress/baseline.json fails.
set -euo pipefail
trap 'echo "regress: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${PGSHARD_REGRESS_DIR:-$ROOT/.regress}
PY=.venv/bin/python
[ -x "$PY" ] || { echo "regress: no .venv; run make bootstrap first" >&2; exit 1; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# As root the servers run as the postgres OS user, which reads the suite's data files and
# writes COPY output under the cache: it must reach it.
if [ -z "${PGSHARD_REGRESS_DIR:-}" ] && [ "$(id -u)" -eq 0 ] && id postgres >/dev/null 2>&1 \
    && ! runuser -u postgres -- test -x "$ROOT/." 2>/dev/null; then
  CACHE=/var/tmp/pgshard-regress
  echo "regress: the postgres OS user cannot enter $ROOT; working in $CACHE"
fi
mkdir -p "$CACHE"
chmod 755 "$CACHE"

# The server the project's harness runs (pgshard.cluster.process.find_pg_bindir).
BINDIR=$("$PY" -c 'from pgshard.cluster.process import find_pg_bindir; print(find_pg_bindir())')
MAJOR=$("$BINDIR/postgres" --version | sed -E 's/.*\(PostgreSQL\) ([0-9]+).*/\1/')
PKG=postgresql-$MAJOR
DEB_VERSION=$(dpkg-query -W -f='${Version}' "$PKG" 2>/dev/null || true)
[ -n "$DEB_VERSION" ] || { echo "regress: $BINDIR is not from the Debian package $PKG" >&2; exit 1; }
UPSTREAM=${DEB_VERSION#*:}
UPSTREAM=${UPSTREAM%%-*}
echo "regress: server $BINDIR ($PKG $DEB_VERSION)"

# 1. The source tree (cached).
SRC=$CACHE/src/postgresql-$UPSTREAM
if [ ! -f "$SRC/src/test/regress/parallel_schedule" ]; then
  APT=$CACHE/apt
  mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$CACHE/src/download"
  # deb-src lines for the suites the system's own sources name (deb822 or one-line form).
  : > "$APT/sources.list"
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    case "$f" in
      *.sources)
        awk 'BEGIN { RS = ""; FS = "\n" }
             { types = uris = suites = comps = key = ""
               for (i = 1; i <= NF; i++) {
                 if ($i ~ /^Types:/) types = $i
                 else if ($i ~ /^URIs:/) { uris = $i; sub(/^URIs:[ \t]*/, "", uris) }
                 else if ($i ~ /^Suites:/) { suites = $i; sub(/^Suites:[ \t]*/, "", suites) }
                 else if ($i ~ /^Components:/) { comps = $i; sub(/^Components:[ \t]*/, "", comps) }
                 else if ($i ~ /^Signed-By:/) { key = $i; sub(/^Signed-By:[ \t]*/, "", key) } }
               if (types !~ /deb/ || uris !~ /debian/) next
               n = split(uris, u, " "); m = split(suites, s, " ")
               for (a = 1; a <= n; a++) for (b = 1; b <= m; b++)
                 printf "deb-src %s%s %s %s\n", (key ? "[signed-by=" key "] " : ""), u[a], s[b], comps }' \
          "$f" >> "$APT/sources.list" ;;
      *)
        sed -nE 's/^[[:space:]]*deb(-src)?[[:space:]]+(.*debian.*)$/deb-src \2/p' "$f" \
          >> "$APT/sources.list" ;;
    esac
  done
  sort -u -o "$APT/sources.list" "$APT/sources.list"
  [ -s "$APT/sources.list" ] || { echo "regress: no Debian archive in /etc/apt/sources*" >&2; exit 1; }
  APT_OPTS=(-o "Dir::Etc::SourceList=$APT/sources.list" -o "Dir::Etc::SourceParts=$APT/none"
            -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache")
  echo "regress: fetching the source of $PKG $DEB_VERSION (apt-get source, deb-src from $APT)"
  apt-get "${APT_OPTS[@]}" update -qq
  cd "$CACHE/src/download"
  # apt downloads as its sandbox user when that user may write here.
  id _apt >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] && chown _apt "$CACHE/src/download"
  if ! apt-get "${APT_OPTS[@]}" source -qq --download-only "$PKG=$DEB_VERSION"; then
    # The archive keeps only current versions: fall back to the newest source of the
    # same major (the comparison direct vs proxy runs on one server either way).
    echo "regress: WARNING: source $PKG=$DEB_VERSION is not in the archive any more;" \
         "using the newest $PKG source (expected files may differ from the server's minor)" >&2
    apt-get "${APT_OPTS[@]}" source -qq --download-only "$PKG"
  fi
  ORIG=$(ls -t "$PKG"_*.orig.tar.* | head -n 1)
  TOP=${ORIG#"$PKG"_}
  TOP=postgresql-${TOP%.orig.tar.*}
  rm -rf "${CACHE:?}/src/$TOP"
  tar -xf "$ORIG" -C "$CACHE/src" "$TOP/src/test/regress" "$TOP/contrib/spi"
  cd "$ROOT"
  if [ "$CACHE/src/$TOP" != "$SRC" ]; then
    rm -rf "$SRC"
    ln -s "$TOP" "$SRC"
  fi
  rm -rf "$CACHE/src/download"
fi
chmod -R a+rX "$CACHE/src"

# 2. PGXS.
PG_CONFIG=$BINDIR/pg_config
pgxs_ready() {
  [ -x "$PG_CONFIG" ] && [ -f "$("$PG_CONFIG" --pgxs 2>/dev/null || echo /none)" ] \
    && [ -f "$("$PG_CONFIG" --includedir-server 2>/dev/null || echo /none)/postgres.h" ]
}
if ! pgxs_ready; then
  DEV=postgresql-server-dev-$MAJOR
  echo "regress: installing $DEV (PGXS) with apt-get"
  $SUDO apt-get update -qq
  # The server's own version when the archive still has it, else the current one.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      "$DEV=$DEB_VERSION" >/dev/null 2>&1 \
    || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      "$DEV" >/dev/null
  pgxs_ready || { echo "regress: $DEV installed, yet no PGXS at $PG_CONFIG" >&2; exit 1; }
fi

# 3. The test modules.
LIB=$CACHE/lib/$UPSTREAM
if [ ! -f "$LIB/regress.so" ] || [ ! -f "$LIB/autoinc.so" ] || [ ! -f "$LIB/refint.so" ]; then
  echo "regress: building regress.so, autoinc.so, refint.so with PGXS"
  BUILD=$CACHE/build/$UPSTREAM
  rm -rf "$BUILD"
  mkdir -p "$BUILD" "$LIB"
  cp "$SRC/src/test/regress/regress.c" "$SRC/contrib/spi/autoinc.c" "$SRC/contrib/spi/refint.c" \
     "$BUILD/"
  printf 'MODULES = regress autoinc refint\nPG_CPPFLAGS = -DREFINT_VERBOSE\nPGXS := $(shell %s --pgxs)\ninclude $(PGXS)\n' \
    "$PG_CONFIG" > "$BUILD/Makefile"
  # with_llvm=no: no JIT bitcode (clang) for modules only the tests load.
  nice -n 10 make -s -C "$BUILD" with_llvm=no PG_CONFIG="$PG_CONFIG" >/dev/null
  cp "$BUILD"/regress.so "$BUILD"/autoinc.so "$BUILD"/refint.so "$LIB/"
  chmod -R a+rX "$CACHE/lib"
fi

PG_REGRESS=$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/regress/pg_regress
[ -x "$PG_REGRESS" ] || { echo "regress: $PG_REGRESS missing ($PKG ships it)" >&2; exit 1; }

exec nice -n 10 "$PY" -m tests.regress.run --suite "$SRC/src/test/regress" --dlpath "$LIB" \
  --pg-regress "$PG_REGRESS" --bindir "$BINDIR" --work-dir "$CACHE" "$@"
