#!/usr/bin/env bash
# Autobahn|Testsuite (`wstest -m fuzzingclient`) against the conformance echo server
# (examples/echo.rs: the handshake, codec, message handling and close of /ws). Prints a
# summary per case group and exits 1 if any case FAILED. docs/conformance.md says what each
# group covers and gives the last results.
#
# Usage: scripts/autobahn.sh [CASE...]      e.g. scripts/autobahn.sh '1.*' '5.*' 7.9.1
#   default: 1.* 2.* 3.* 4.* 5.* 6.* 7.* 9.* 12.* 13.*
#
# The suite runs on Python 2.7 only: it is installed on first use into a virtualenv under
# .tmp/autobahn/ with the pinned versions of scripts/autobahn-constraints.txt, using pyenv's
# CPython 2.7.18 (or PY27=/path/to/python2.7). Reports (HTML and JSON) go to target/autobahn/.
#
# Environment:
#   PY27                the Python 2.7 interpreter (default: $(pyenv root)/versions/2.7.18)
#   AUTOBAHN_PROFILE    cargo profile of the echo server: dev (default) or release
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$ROOT/.tmp/autobahn
VENV=$WORK/venv
OUT=$ROOT/target/autobahn
PROFILE=${AUTOBAHN_PROFILE:-dev}

if [ $# -gt 0 ]; then
  CASES=("$@")
else
  CASES=('1.*' '2.*' '3.*' '4.*' '5.*' '6.*' '7.*' '9.*' '12.*' '13.*')
fi

# Cases 9.* send messages of up to 16 MiB: the echo server takes a little more.
MAX_MESSAGE_SIZE=$((16 * 1024 * 1024 + 64 * 1024))

# --- the suite, installed once -------------------------------------------------------------
if [ ! -x "$VENV/bin/wstest" ]; then
  if [ -z "${PY27:-}" ]; then
    command -v pyenv >/dev/null 2>&1 || {
      echo "autobahn.sh: needs Python 2.7: set PY27, or install pyenv's 2.7.18" >&2
      exit 1
    }
    PY27=$(pyenv root)/versions/2.7.18/bin/python
  fi
  [ -x "$PY27" ] || { echo "autobahn.sh: no Python 2.7 at $PY27 (set PY27)" >&2; exit 1; }
  echo "installing Autobahn|Testsuite 0.8.2 into $VENV (once)"
  rm -rf "$VENV" "$WORK/tools"
  mkdir -p "$WORK"
  # virtualenv itself into .tmp too, not into the user's site-packages.
  "$PY27" -m pip install -q --disable-pip-version-check --target "$WORK/tools" 'virtualenv<20.22'
  PYTHONPATH="$WORK/tools" "$PY27" -m virtualenv -q "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    -c scripts/autobahn-constraints.txt autobahntestsuite==0.8.2
fi

# --- the echo server, on a free port ---------------------------------------------------------
if [ "$PROFILE" = release ]; then
  cargo build -q --release --example echo
  ECHO=$TARGET/release/examples/echo
else
  cargo build -q --example echo
  ECHO=$TARGET/debug/examples/echo
fi
rm -rf "$OUT"
mkdir -p "$OUT"
SERVER_LOG=$WORK/echo.log
SWITCHBOARD__LIMITS__MAX_MESSAGE_SIZE=$MAX_MESSAGE_SIZE \
  SWITCHBOARD__LIMITS__MAX_PENDING_BYTES=$((4 * MAX_MESSAGE_SIZE)) \
  "$ECHO" 0 >"$SERVER_LOG" 2>&1 &
ECHO_PID=$!
trap 'kill "$ECHO_PID" 2>/dev/null || true; wait "$ECHO_PID" 2>/dev/null || true' EXIT
ADDR=""
for _ in $(seq 300); do
  ADDR=$(sed -n 's/^listening on //p' "$SERVER_LOG")
  [ -n "$ADDR" ] && break
  kill -0 "$ECHO_PID" 2>/dev/null || { echo "echo server exited:" >&2; cat "$SERVER_LOG" >&2; exit 1; }
  sleep 0.1
done
[ -n "$ADDR" ] || { echo "echo server did not start in 30 s" >&2; cat "$SERVER_LOG" >&2; exit 1; }

# --- the run ------------------------------------------------------------------------------
python3 - "$OUT" "ws://$ADDR/ws" "${CASES[@]}" >"$WORK/spec.json" <<'EOF'
import json, sys
out, url, cases = sys.argv[1], sys.argv[2], sys.argv[3:]
json.dump({
    "outdir": out,
    "servers": [{"agent": "switchboard-echo", "url": url}],
    "cases": cases,
    "exclude-cases": [],
    "exclude-agent-cases": {},
}, sys.stdout, indent=2)
EOF
echo "wstest -m fuzzingclient against $ADDR: ${CASES[*]}"
START=$(date +%s)
# wstest's own exit status says nothing about the cases: the index below does.
(cd "$WORK" && "$VENV/bin/wstest" -m fuzzingclient -s spec.json) >"$WORK/wstest.log" 2>&1 || true
echo "wstest took $(($(date +%s) - START)) s (its log: $WORK/wstest.log)"

# --- the summary --------------------------------------------------------------------------
python3 - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
index_path = os.path.join(out, "index.json")
if not os.path.exists(index_path):
    sys.exit("autobahn.sh: no %s: wstest did not run (see .tmp/autobahn/wstest.log)" % index_path)
index = json.load(open(index_path))
KINDS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
groups, odd = {}, []
for agent, cases in index.items():
    for case, r in cases.items():
        g = int(case.split(".")[0])
        row = groups.setdefault(g, dict({k: 0 for k in KINDS}, ms=0))
        # A case is as bad as the worse of its behaviour and its closing behaviour.
        verdicts = [r["behavior"], r["behaviorClose"]]
        verdict = max(verdicts, key=lambda v: KINDS.index(v) if v in KINDS else len(KINDS))
        if verdict not in KINDS:
            verdict = "FAILED"
        row[verdict] += 1
        row["ms"] += r.get("duration", 0)
        if verdict != "OK":
            report = {}
            try:
                report = json.load(open(os.path.join(out, r["reportfile"])))
            except (KeyError, IOError, ValueError):
                pass
            odd.append((verdict, case, r, report))
if not groups:
    sys.exit("autobahn.sh: index.json lists no case")
header = ["group"] + KINDS + ["case time"]
print("%-6s %5s %10s %13s %13s %6s %10s" % tuple(header))
total = dict({k: 0 for k in KINDS}, ms=0)
for g in sorted(groups):
    row = groups[g]
    for k in total:
        total[k] += row[k]
    print("%-6s %5d %10d %13d %13d %6d %9.1fs" % ((g,) + tuple(row[k] for k in KINDS) + (row["ms"] / 1000.0,)))
print("%-6s %5d %10d %13d %13d %6d %9.1fs" % (("all",) + tuple(total[k] for k in KINDS) + (total["ms"] / 1000.0,)))
for verdict, case, r, report in sorted(odd, key=lambda o: (KINDS.index(o[0]) if o[0] in KINDS else 9, [int(p) for p in o[1].split(".")])):
    why = report.get("result") or ""
    close = report.get("resultClose") or ""
    print("%s %s: %s%s (close: %s, remote code %s)" % (
        verdict, case, why, "" if not close else " / " + close,
        r["behaviorClose"], r.get("remoteCloseCode")))
unimplemented = sum(groups[g]["UNIMPLEMENTED"] for g in (12, 13) if g in groups)
if unimplemented:
    # The server negotiates permessage-deflate (issue 12): a case of 12 or 13 that is not
    # implemented means the negotiation broke.
    print("autobahn.sh: %d cases of 12.*/13.* (permessage-deflate) are UNIMPLEMENTED: the "
          "echo server did not negotiate the extension" % unimplemented)
print("reports: %s/index.html" % out)
sys.exit(1 if total["FAILED"] or unimplemented else 0)
EOF
