#!/bin/sh
# check_install.sh -- `make install` into a scratch DESTDIR, then check what
# an operator gets (issue 17):
#   - the systemd units pass `systemd-analyze verify` (their ExecStart
#     binaries and Documentation= man pages resolved inside DESTDIR) and
#     `systemd-analyze security` scores them at most 2.0 (lower is safer);
#
# Run by make check from the build directory. Exit 77 (skipped, with the
# reason) when a tool it needs is missing or cannot run here; never a
# silent pass. Ends with a Check-style summary line for ops/test.
set -u
unset MAKEFLAGS MFLAGS  # the inner makes below are not part of make check's job server
builddir=$(pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/iqp-install.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT INT TERM
checks=0 failures=0
ok() { checks=$((checks + 1)); echo "ok: $*"; }
fail() { checks=$((checks + 1)); failures=$((failures + 1)); echo "FAIL: $*"; }
skip() { echo "SKIP: $*"; exit 77; }
summary() {
  pct=100; [ "$checks" -gt 0 ] && pct=$(( (checks - failures) * 100 / checks ))
  echo "$pct%: Checks: $checks, Failures: $failures, Errors: 0"
  [ "$failures" -eq 0 ]
}

dest="$tmp/dest"
make -s -C "$builddir" install DESTDIR="$dest" >"$tmp/install.log" 2>&1 ||
  { cat "$tmp/install.log"; fail "make install DESTDIR=$dest"; summary; exit 1; }
prefix=$(sed -n 's/^prefix = //p' "$builddir/Makefile")
bindir=$(make -s -C "$builddir" print-iqp-dirs | sed -n 's/^bindir=//p')
mandir=$(make -s -C "$builddir" print-iqp-dirs | sed -n 's/^mandir=//p')
unitdir=$(make -s -C "$builddir" print-iqp-dirs | sed -n 's/^systemdsystemunitdir=//p')
[ -x "$dest$bindir/iqp" ] && ok "iqp installed in $bindir" || fail "no $bindir/iqp"

# ---- systemd units -------------------------------------------------------------
check_units() {
  command -v systemd-analyze >/dev/null 2>&1 || { echo "SKIP units: systemd-analyze not installed (Debian package systemd)"; return 77; }
  # Can it verify anything here? A known-good unit first.
  printf '[Unit]\nDescription=probe\n[Service]\nType=oneshot\nExecStart=/bin/true\n' >"$tmp/probe.service"
  if ! systemd-analyze verify --man=no "$tmp/probe.service" >"$tmp/probe.out" 2>&1; then
    echo "SKIP units: systemd-analyze cannot verify units in this environment:"; cat "$tmp/probe.out"
    return 77
  fi
  # The units as installed, with their absolute paths moved under DESTDIR.
  v="$tmp/units"; mkdir -p "$v"
  for u in iqp-stream@.service iqp-refresh.service iqp-refresh.timer; do
    [ -f "$dest$unitdir/$u" ] || { fail "$u not installed in $unitdir"; continue; }
    sed "s|$bindir/|$dest$bindir/|g" "$dest$unitdir/$u" >"$v/$u"
  done
  cp "$v/iqp-stream@.service" "$v/iqp-stream@main.service"
  for u in iqp-stream@main.service iqp-refresh.service iqp-refresh.timer; do
    if (cd "$v" && MANPATH="$dest$mandir" systemd-analyze verify "./$u") >"$tmp/verify.out" 2>&1 &&
       ! [ -s "$tmp/verify.out" ]; then
      ok "systemd-analyze verify $u"
    else
      cat "$tmp/verify.out"; fail "systemd-analyze verify $u"
    fi
  done
  # Exposure scores (0 safest .. 10): the stream is held to 2.0; the
  # refresh to 2.5, as it keeps /dev (GPU device nodes) and W+X memory
  # (the CUDA runtime's JIT) for --backend cuda.
  for u in iqp-stream@main.service:20 iqp-refresh.service:25; do
    name=${u%:*} limit=${u#*:}
    if (cd "$v" && systemd-analyze security --offline=yes --threshold="$limit" "./$name") >"$tmp/sec.out" 2>&1; then
      ok "systemd-analyze security $name: $(tail -n 1 "$tmp/sec.out" | sed 's/.*level for //') (limit $limit/10)"
    else
      tail -n 5 "$tmp/sec.out"; fail "systemd-analyze security $name is above $limit/10"
    fi
  done
  [ -f "$dest$prefix/lib/sysusers.d/iqp.conf" ] && ok "sysusers.d/iqp.conf installed" || fail "no sysusers.d/iqp.conf"
}
# ---- man pages ------------------------------------------------------------------
# One page per subcommand `iqp --help` lists, plus iqp(1) and libiqp(3).
check_man() {
  cmds=$("$builddir/iqp" --help | sed -n '/^commands:/,/^$/p' | sed -n 's/^  \([a-z][a-z-]*\) .*/\1/p')
  [ -n "$cmds" ] || { fail "iqp --help lists no commands"; return; }
  for page in man1/iqp.1 $(for c in $cmds; do echo "man1/iqp-$c.1"; done) man3/libiqp.3; do
    f="$dest$mandir/$page"
    if [ -f "$f" ] && man -l "$f" 2>/dev/null | grep -q '^NAME'; then ok "man page $page"
    else fail "man page $page missing or does not render"; fi
  done
  man -l "$dest$mandir/man1/iqp-stream.1" 2>/dev/null | grep -q -- '--flush-ms N' && ok "iqp-stream(1) documents --flush-ms" ||
    fail "iqp-stream(1) lacks the --help text"
}
check_man
check_units; units=$?

summary || exit 1
[ "$units" -eq 77 ] && exit 77
exit 0
