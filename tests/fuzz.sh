#!/usr/bin/env bash
# Runs each fuzz target (libFuzzer through cargo-fuzz, nightly Rust) for SECONDS (default 60)
# and writes what each ran to bench/results-fuzz.md. Fails when a target does not build or run,
# and on any finding: a crash, an out-of-memory, a timeout or a leak leaves its input in
# fuzz/artifacts/<target>/; copy that file into fuzz/regressions/<target>/ so `cargo test`
# replays it from then on.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
results=../bench/results-fuzz.md
{
  echo "# Fuzzing results"
  echo
  echo "$(date -u +%Y-%m-%d), $(nproc) cores; libFuzzer through cargo-fuzz, no sanitizer (Rust code), ${seconds} s per target. Reproduce: \`tests/fuzz.sh ${seconds}\`."
  echo
  echo "| target | inputs run | findings |"
  echo "|---|---|---|"
} > "$results.tmp"
for target in route names manifest attachments; do
  mkdir -p "corpus/$target"
  cp -n seeds/"$target"/* "corpus/$target/" 2>/dev/null || true
  rm -rf "artifacts/$target"
  echo "fuzz: $target for ${seconds}s"
  log=$(mktemp)
  status=0
  cargo +nightly fuzz run --sanitizer none -O "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 > "$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  findings=$(find "artifacts/$target" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' \) 2>/dev/null | wc -l)
  if [ "$findings" -gt 0 ]; then
    grep -E "^(==|SUMMARY)|panicked" "$log" | tail -20 >&2 || true
    echo "fuzz: $target found $findings problem(s); inputs in fuzz/artifacts/$target/" >&2
    rm -f "$log" "$results.tmp"
    exit 1
  fi
  if [ "$status" -ne 0 ] || [ -z "$runs" ] || [ "$runs" -eq 0 ]; then
    tail -20 "$log" >&2
    echo "fuzz: $target did not build or run (exit $status, ${runs:-no} inputs run)" >&2
    rm -f "$log" "$results.tmp"
    exit 1
  fi
  rm -f "$log"
  echo "| $target | $runs | 0 |" >> "$results.tmp"
done
mv "$results.tmp" "$results"
echo "fuzz: results in bench/results-fuzz.md"
