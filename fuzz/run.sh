#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (docs/fuzzing.md). Not part of .ci/run.
#
# Usage: fuzz/run.sh [seconds per target, default 60] [target ...]
#
# cargo-fuzz needs nightly compiler flags (-Zsanitizer, sancov passes). This machine has only a
# stable toolchain, so RUSTC_BOOTSTRAP=1 lets stable rustc accept them; checked with Rust 1.95 and
# cargo-fuzz 0.13.2. The targets are built without a sanitizer (`--sanitizer none`): the code
# under test is safe Rust (`unsafe_code = "forbid"`), a panic or failed assertion is the finding,
# and without ASan the targets run several times faster. Debug assertions (overflow checks) are on.
#
# New inputs libFuzzer finds go to a working corpus outside the repository (seeded from
# fuzz/corpus/<target>, the committed seeds); a crash is written to fuzz/artifacts/<target>/ and
# the script exits non-zero. Reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none <target> fuzz/artifacts/<target>/<file>
set -euo pipefail
cd "$(dirname "$0")"

SECONDS_EACH="${1:-60}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(spec_yaml spec_json github_event cron image_reference dotenv)

export RUSTC_BOOTSTRAP=1
CACHE="${HOME:-/root}/.cache/enclii"
# A target dir of its own: fuzz builds instrument every crate and would invalidate the
# workspace's shared build cache.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$CACHE/fuzz-target}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2

FLAGS=(--sanitizer none --debug-assertions)
cargo fuzz build "${FLAGS[@]}"

status=0
for target in "${TARGETS[@]}"; do
  work="$CACHE/fuzz-corpus/$target"
  mkdir -p "$work" "artifacts/$target"
  echo "== $target: ${SECONDS_EACH}s"
  log="$CACHE/fuzz-$target.log"
  rc=0
  cargo fuzz run "${FLAGS[@]}" "$target" "$work" "corpus/$target" -- \
    -max_total_time="$SECONDS_EACH" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="artifacts/$target/" -print_final_stats=1 >"$log" 2>&1 || rc=$?
  grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY|thread .* panicked)' "$log" || true
  if [ "$rc" -ne 0 ]; then
    echo "!! $target failed (exit $rc): see fuzz/artifacts/$target/ and $log"
    tail -n 30 "$log"
    status=1
  fi
done
exit "$status"
