#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ (docs/security.md, "Fuzzing"), one after the other, each for
# a bounded time; exits 1 if any of them crashed (a panic, an assertion of its invariants, a
# timeout or running out of memory), after running them all.
#
#   bash scripts/fuzz.sh [SECONDS | --smoke] [TARGET...]
#
# SECONDS per target (default 30; --smoke: 5); TARGET: ws_frame, command, token, config
# (default: all). CI runs `bash scripts/fuzz.sh 20`.
#
# Two builds (fuzz/Cargo.toml): runs of up to 60 s per target use the dev build (opt-level 0,
# about 2.5 minutes to build from scratch on two cores, where the whole run would otherwise be
# the build), longer ones the optimized release build (about 5 minutes, 15 to 25 times more
# inputs a second). FUZZ_BUILD=dev or FUZZ_BUILD=release chooses.
#
# Stable Rust is enough: cargo-fuzz builds with libFuzzer's coverage instrumentation, which
# stable rustc has; only the sanitizers need nightly, so the targets run without one
# (`--sanitizer none`: the code is safe Rust, and a panic is what the targets look for).
# cargo-fuzz itself is installed from crates.io when missing (about a minute on two cores).
#
# Each target starts from its committed seeds (fuzz/corpus/TARGET, only read) and keeps what
# it finds in fuzz/target/corpus/TARGET, so later runs go on from there. A crash is saved in
# fuzz/artifacts/TARGET/ and printed here in base64, since a CI machine's files are gone after
# the run: `base64 -d > crash` and `cargo fuzz run --sanitizer none --dev TARGET crash` replays
# it (or the same with `--codegen-units 16` instead of `--dev`, the release build).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FUZZ=$ROOT/fuzz
CARGO_FUZZ_VERSION=0.13.2
ALL=(ws_frame command token config)

secs=30
case "${1:-}" in
  --smoke) secs=5; shift ;;
  '' | -*) ;;
  *[!0-9]*) ;;
  *) secs=$1; shift ;;
esac
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL[@]}")
log() { echo "fuzz: $*" >&2; }

build=${FUZZ_BUILD:-}
[ -n "$build" ] || { [ "$secs" -le 60 ] && build=dev || build=release; }
case "$build" in
  dev) FLAGS=(--sanitizer none --dev) ;;
  # cargo-fuzz builds release with one codegen unit: several times slower to build.
  release) FLAGS=(--sanitizer none --codegen-units 16) ;;
  *) log "FUZZ_BUILD is dev or release, not $build"; exit 2 ;;
esac

begin=$SECONDS
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION from crates.io"
  cargo install --locked --quiet "cargo-fuzz@$CARGO_FUZZ_VERSION"
fi

# The fuzz crate keeps its own target dir (fuzz/target), whatever the caller's is.
unset CARGO_TARGET_DIR
start=$SECONDS
cargo fuzz build "${FLAGS[@]}"
log "$build build in $((SECONDS - start)) s"

failed=()
for t in "${targets[@]}"; do
  work=$FUZZ/target/corpus/$t
  mkdir -p "$work" "$FUZZ/artifacts/$t"
  args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
  [ -f "$FUZZ/dict/$t.dict" ] && args+=(-dict="$FUZZ/dict/$t.dict")
  out=$FUZZ/target/fuzz-$t.log
  log "$t: ${secs} s"
  if cargo fuzz run "${FLAGS[@]}" "$t" "$work" "$FUZZ/corpus/$t" -- "${args[@]}" >"$out" 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out" | grep -o '[0-9]*$' || true)
    cov=$(grep -o 'cov: [0-9]* ft: [0-9]* corp: [0-9]*' "$out" | tail -n 1 || true)
    log "$t: ok, ${runs:-?} runs, ${cov:-no coverage line}"
  else
    failed+=("$t")
    log "$t: FAILED; from its log ($out):"
    grep -E -A 3 'panicked at|^==[0-9]+== ERROR|^SUMMARY|ALARM|out-of-memory' "$out" | head -n 40 |
      sed 's/^/    /' >&2 || tail -n 40 "$out" | sed 's/^/    /' >&2
    for crash in $(grep -o "$FUZZ/artifacts/$t/[a-z-]*-[0-9a-f]*" "$out" | sort -u); do
      log "$t: input $crash, in base64:"
      base64 -w 0 "$crash" >&2
      echo >&2
    done
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  log "FAILED: ${failed[*]}"
  exit 1
fi
log "all ${#targets[@]} targets ran ${secs} s each without a crash ($((SECONDS - begin)) s in all)"
