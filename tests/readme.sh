#!/usr/bin/env bash
# tests/readme.sh -- runs every ```sh block of README.md as written, so the
# README cannot drift from the code.
#
# Design
# ------
# A block is the text between a line "```sh" and the next line "```". Each
# one runs on its own, in order, with `bash -e -o pipefail` (a failing
# command fails the block), from a scratch copy of the repository root:
# every top-level entry of the source tree is symlinked into it, and
# `_build` points at the build under test (the tree make check runs in, so
# `ops/test --sanitize` runs the blocks with the sanitized binaries). What
# a block writes to relative paths lands in the scratch directory; TMPDIR
# points into it too, so `mktemp` in a block does.
#
# Servers, started by this script only for the blocks that name them, fresh
# for each such block and stopped (by pid) after it:
#   $REDIS_URL  redis://127.0.0.1:PORT/0, a redis-server on a free loopback
#               port, no persistence;
#   $BROKERS    the bootstrap list of a local Kafka (`iqp devbroker`).
# README "Running the examples" says how to set them by hand.
#
# Blocks that belong together (a walk-through whose steps share a shell:
# variables, files, processes started by an earlier step) are joined into
# one: a block whose fence has, on the line just before it,
#   <!-- readme-test: continue -->
# is appended to the block before it and runs in the same bash, with that
# block's servers, under the sum of their time limits.
#
# A block that must not run here (it installs packages, or runs this test
# suite itself) is marked on the line just before its fence with
#   <!-- readme-test: skip REASON -->
# and reported as skipped with its reason. With a sanitized build (ops/test
# --sanitize) blocks that run `iqp stream` are skipped too, as the stream
# tests are (SANITIZE_SKIP in Makefile.am: under ASan the stream stalls on
# a 2-core machine); they run in the normal build. Every other block runs:
# blocks added to README later are picked up without touching this script.
#
# Each block has a time limit (120 s times CK_TIMEOUT_MULTIPLIER); a block's
# leftover processes (its process group) are killed when it ends. Output:
# one line per block (PASS / FAIL / SKIP, its number, README line and
# section); for a failed block its text and the last lines of its output;
# then a summary in Check's format ("100%: Checks: N, Failures: F, Errors:
# 0"), which ops/test adds to its pass/fail count. Exit 0 when no block
# failed.
set -uo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
build=${IQP_BUILD_DIR:-$PWD}           # make check runs tests in the build tree
[[ -x "$build/iqp" ]] || build="$src/_build"
build=$(cd "$build" && pwd)
readme="$src/README.md"
mult=${CK_TIMEOUT_MULTIPLIER:-1}
limit=$((120 * mult))

[[ -x "$build/iqp" ]] || { echo "readme: no iqp binary in $build (run ops/build)"; exit 1; }
[[ -f "$readme" ]] || { echo "readme: $readme not found"; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/iqp-readme.XXXXXX")
redis_pid="" broker_pid="" block_pid=""

stop_pid() { # pid: TERM, then KILL after ~5 s
  local pid=$1
  [[ -n "$pid" ]] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}

stop_servers() {
  stop_pid "$redis_pid"
  stop_pid "$broker_pid"
  redis_pid="" broker_pid=""
}

cleanup() {
  [[ -n "$block_pid" ]] && kill -KILL -- "-$block_pid" 2>/dev/null
  stop_servers
  rm -rf "$tmp"
}
trap cleanup EXIT

# ---- the scratch repository root ---------------------------------------------
repo="$tmp/repo"
mkdir -p "$repo" "$tmp/tmp"
for entry in "$src"/* "$src"/.[!.]*; do
  name=$(basename "$entry")
  case $name in _build|_san|_quickstart|.git|'.[!.]*') continue ;; esac
  ln -s "$entry" "$repo/$name"
done
ln -s "$build" "$repo/_build"

# ---- servers -------------------------------------------------------------------
start_redis() {
  command -v redis-server >/dev/null || { echo "redis-server not found (ops/setup installs it)"; return 1; }
  local port
  for _ in $(seq 20); do
    port=$((20000 + RANDOM % 20000))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue # taken
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
      >"$tmp/redis.log" 2>&1 &
    redis_pid=$!
    for _ in $(seq 100); do
      if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
        export REDIS_URL="redis://127.0.0.1:$port/0"
        return 0
      fi
      kill -0 "$redis_pid" 2>/dev/null || break # lost the port to someone else
      sleep 0.1
    done
    stop_pid "$redis_pid"
    redis_pid=""
  done
  echo "could not start redis-server (log: $(tail -n 3 "$tmp/redis.log"))"
  return 1
}

start_broker() {
  : >"$tmp/broker.out"
  "$build/iqp" devbroker </dev/null >"$tmp/broker.out" 2>"$tmp/broker.err" &
  broker_pid=$!
  for _ in $(seq $((100 * mult))); do
    if [[ -s "$tmp/broker.out" ]] && grep -q . "$tmp/broker.out"; then
      BROKERS=$(head -n 1 "$tmp/broker.out")
      export BROKERS
      return 0
    fi
    kill -0 "$broker_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "iqp devbroker did not start: $(tail -n 3 "$tmp/broker.err")"
  return 1
}

# ---- the blocks ------------------------------------------------------------------
# Writes block i's text to $tmp/block-i.sh and its README line, section and
# skip reason (if any) to $tmp/block-i.meta; prints the number of blocks.
extract_blocks() {
  awk -v dir="$tmp" '
    /^#+ / { section = $0; sub(/^#+ /, "", section) }
    in_block && /^```[[:space:]]*$/ { in_block = 0; close(file); next }
    in_block { print > file; next }
    /^```sh[[:space:]]*$/ && prev ~ /<!-- readme-test: continue/ && n > 0 {
      in_block = 1; file = dir "/block-" n ".sh"; parts[n]++
      print "" >> file
      printf "%d\t%d\t%s\t%s\n", first[n], parts[n], sect[n], skips[n] > (dir "/block-" n ".meta"); close(dir "/block-" n ".meta")
      next
    }
    /^```sh[[:space:]]*$/ {
      n++; in_block = 1; file = dir "/block-" n ".sh"; printf "" > file
      skip = ""
      if (prev ~ /<!-- readme-test: skip/) {
        skip = prev; sub(/.*<!-- readme-test: skip[[:space:]]*/, "", skip); sub(/[[:space:]]*-->.*/, "", skip)
        if (skip == "") skip = "(no reason given)"
      }
      first[n] = NR; sect[n] = section; skips[n] = skip; parts[n] = 1
      printf "%d\t%d\t%s\t%s\n", NR, 1, section, skip > (dir "/block-" n ".meta"); close(dir "/block-" n ".meta")
    }
    { prev = $0 }
    END { if (in_block) { print "unterminated ```sh block" > "/dev/stderr"; exit 1 } print n + 0 }
  ' "$readme"
}

n=$(extract_blocks) || { echo "readme: cannot parse README.md"; echo "0%: Checks: 1, Failures: 1, Errors: 0"; exit 1; }
sanitized=0
grep -qa '__asan_init' "$build/iqp" && sanitized=1
passed=0 failed=0 skipped=0
for i in $(seq "$n"); do
  IFS=$'\t' read -r line parts section skip <"$tmp/block-$i.meta"
  if [[ -z "$skip" ]] && ((sanitized)) && grep -q 'iqp stream' "$tmp/block-$i.sh"; then
    skip="runs iqp stream, which stalls under ASan (SANITIZE_SKIP in Makefile.am); runs in the normal build"
  fi
  what="README block $i (line $line, \"$section\")"
  ((parts > 1)) && what="$what with the $((parts - 1)) blocks that continue it"
  if [[ -n "$skip" ]]; then
    echo "SKIP $what: $skip"
    skipped=$((skipped + 1))
    continue
  fi
  out="$tmp/block-$i.out"
  : >"$out"
  ok=1
  unset REDIS_URL BROKERS
  if grep -q 'REDIS_URL' "$tmp/block-$i.sh"; then start_redis >>"$out" 2>&1 || ok=0; fi
  if grep -q 'BROKERS' "$tmp/block-$i.sh"; then start_broker >>"$out" 2>&1 || ok=0; fi
  rc=0
  if ((ok)); then
    # its own process group (setsid), so whatever it leaves running goes with it
    (cd "$repo" && TMPDIR="$tmp/tmp" exec setsid timeout -s TERM -k 10 "$((limit * parts))" \
      bash -e -o pipefail "$tmp/block-$i.sh") >>"$out" 2>&1 &
    block_pid=$!
    wait "$block_pid"
    rc=$?
    kill -KILL -- "-$block_pid" 2>/dev/null
    block_pid=""
  fi
  stop_servers
  if ((ok)) && ((rc == 0)); then
    echo "PASS $what"
    passed=$((passed + 1))
  else
    ((rc == 124)) && echo "(timed out after $((limit * parts)) s)" >>"$out"
    echo "FAIL $what: exit $rc"
    sed 's/^/    | /' "$tmp/block-$i.sh"
    echo "    output (last 30 lines):"
    tail -n 30 "$out" | sed 's/^/    > /'
    failed=$((failed + 1))
  fi
done
checks=$((passed + failed))
pct=100
((checks > 0)) && pct=$((100 * passed / checks))
echo "readme: $n sh blocks: $passed passed, $failed failed, $skipped skipped"
echo "${pct}%: Checks: $checks, Failures: $failed, Errors: 0"
((failed == 0))
