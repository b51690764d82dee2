#!/bin/sh
# check_rules.sh -- the Prometheus rules and the Grafana dashboard (issue 17):
#   - `promtool check rules` accepts ops/prometheus/iqp.rules.yml;
#   - `promtool test rules` passes its unit tests (alerts fire on the series
#     that should fire them, and only those);
#   - every PromQL expression of ops/grafana/iqp.json parses (checked as
#     recording rules, with Grafana's variables given values).
# That they name only exported metrics is tests/check_ops.c's job.
# Exit 77 (skipped, with the reason) without promtool (Debian package
# prometheus). Ends with a Check-style summary line for ops/test.
set -u
srcdir=${srcdir:-.}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/iqp-rules.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT INT TERM
checks=0 failures=0
ok() { checks=$((checks + 1)); echo "ok: $*"; }
fail() { checks=$((checks + 1)); failures=$((failures + 1)); echo "FAIL: $*"; }
command -v promtool >/dev/null 2>&1 || { echo "SKIP: promtool not installed (Debian package prometheus; ops/setup)"; exit 77; }

rules="$srcdir/ops/prometheus/iqp.rules.yml"
if promtool check rules "$rules" >"$tmp/out" 2>&1; then ok "promtool check rules: $(grep -o 'SUCCESS.*' "$tmp/out")"
else cat "$tmp/out"; fail "promtool check rules $rules"; fi
if (cd "$srcdir/ops/prometheus" && promtool test rules iqp.rules.test.yml) >"$tmp/out" 2>&1; then
  ok "promtool test rules iqp.rules.test.yml"
else cat "$tmp/out"; fail "promtool test rules iqp.rules.test.yml"; fi

# Dashboard expressions as recording rules: promtool parses each one.
dash="$srcdir/ops/grafana/iqp.json"
python3 - "$dash" "$tmp/dash.rules.yml" <<'PY' || { fail "cannot read $dash"; }
import json, sys
d = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
with open(sys.argv[2], "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, e in enumerate(exprs):
        e = e.replace("$__rate_interval", "5m").replace("$instance", ".*")
        f.write("      - record: iqp:dashboard_%d\n        expr: %s\n" % (i, json.dumps(e)))
print(len(exprs), file=sys.stderr)
PY
n=$(grep -c 'record:' "$tmp/dash.rules.yml" 2>/dev/null || echo 0)
if [ "$n" -ge 20 ] && promtool check rules "$tmp/dash.rules.yml" >"$tmp/out" 2>&1; then
  ok "the dashboard's $n expressions parse"
else cat "$tmp/out" 2>/dev/null; fail "dashboard expressions ($n found)"; fi

pct=100; [ "$checks" -gt 0 ] && pct=$(( (checks - failures) * 100 / checks ))
echo "$pct%: Checks: $checks, Failures: $failures, Errors: 0"
[ "$failures" -eq 0 ]
