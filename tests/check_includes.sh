#!/bin/sh
# check_includes.sh -- the include-direction check (issue 14 item 1):
#   - ops/check-includes passes on this tree: every upward include and
#     module cycle is one of ops/include-baseline.txt, and every baseline
#     line still occurs;
#   - it can fail: on scratch copies of the sources it must report, and exit
#     1 for, a deliberate upward include (util/ including cli/), a sideways
#     include that closes a cycle (client/ including publisher/, which
#     includes client/), a file-level include cycle, and a baseline line
#     that no longer occurs.
# Ends with a Check-style summary line for ops/test.
set -u
srcdir=${srcdir:-.}
check="$srcdir/ops/check-includes"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/iqp-includes.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT INT TERM
checks=0 failures=0
ok() { checks=$((checks + 1)); echo "ok: $*"; }
fail() { checks=$((checks + 1)); failures=$((failures + 1)); echo "FAIL: $*"; }
command -v python3 >/dev/null 2>&1 || { echo "SKIP: python3 not installed"; exit 77; }

# 1. This tree.
if "$check" --root "$srcdir" >"$tmp/out" 2>&1 \
   && grep -q ' 0 new, 0 baseline lines no longer occurring$' "$tmp/out"; then
  ok "this tree: $(grep '^summary:' "$tmp/out")"
else cat "$tmp/out"; fail "ops/check-includes on this tree"; fi

# A scratch copy of the sources and the baseline (no build outputs).
mkdir -p "$tmp/orig/ops"
(cd "$srcdir" && find model aggregator store schemas consumers publisher refresher export \
   client gen cli util bench tests fuzz -type f \( -name '*.[ch]' -o -name '*.cu' -o -name '*.cuh' \) \
   ! -path '*/_*' -print) >"$tmp/list"
(cd "$srcdir" && tar -cf - -T "$tmp/list") | tar -C "$tmp/orig" -xf - || exit 99
cp "$srcdir/ops/include-baseline.txt" "$tmp/orig/ops/" || exit 99

# expect_failure NAME PATTERN: `ops/check-includes --root $tmp/NAME` exits 1
# and prints PATTERN (a grep -E pattern).
expect_failure() {
  "$check" --root "$tmp/$1" >"$tmp/$1.out" 2>&1
  rc=$?
  if [ "$rc" -eq 1 ] && grep -qE "$2" "$tmp/$1.out"; then ok "$1: exit 1, reports: $(grep -E -m1 "$2" "$tmp/$1.out")"
  else cat "$tmp/$1.out"; fail "$1: expected exit 1 and /$2/, got exit $rc"; fi
}
fresh() { cp -R "$tmp/orig" "$tmp/$1"; }

# 2. An upward include: util/ (ground floor) including cli/ (top).
fresh upward
echo '#include "cli/cli.h"' >>"$tmp/upward/util/clock.h"
n=$(wc -l <"$tmp/upward/util/clock.h")
expect_failure upward "^  NEW upward: util/clock\\.h:$n -> cli/cli\\.h$"

# 3. A sideways include closing a cycle on one floor: publisher/ already
# includes client/; client/ including publisher/ closes the loop.
fresh sideways
echo '#include "publisher/publisher.h"' >>"$tmp/sideways/client/iqp.h"
n=$(wc -l <"$tmp/sideways/client/iqp.h")
expect_failure sideways "^  NEW cycle: client/iqp\\.h:$n -> publisher/publisher\\.h$"

# 4. A file-level include cycle inside one module.
fresh filecycle
echo '#include "util/logfmt.h"' >>"$tmp/filecycle/util/clock.h"
echo '#include "util/clock.h"' >>"$tmp/filecycle/util/logfmt.h"
expect_failure filecycle '^  NEW: util/clock\.h <-> util/logfmt\.h$'

# 5. A baseline line that no longer occurs (the baseline only shrinks).
fresh stale
echo 'util/clock.h -> cli/cli.h' >>"$tmp/stale/ops/include-baseline.txt"
expect_failure stale '^  GONE: .*util/clock\.h -> cli/cli\.h no longer occurs'

pct=0
[ "$checks" -gt 0 ] && pct=$(( (checks - failures) * 100 / checks ))
echo "$pct%: Checks: $checks, Failures: $failures, Errors: 0"
[ "$failures" -eq 0 ]
