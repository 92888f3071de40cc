#!/usr/bin/env bash
# Runs each fuzz target (libFuzzer through cargo-fuzz, nightly Rust) for SECONDS (default 60).
# A crash leaves its input in fuzz/artifacts/<target>/ and fails this script: copy that file
# into fuzz/regressions/<target>/ so `cargo test` replays it from then on.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
for target in route names manifest attachments; do
  mkdir -p "corpus/$target"
  cp -n seeds/"$target"/* "corpus/$target/" 2>/dev/null || true
  echo "fuzz: $target for ${seconds}s"
  cargo +nightly fuzz run --sanitizer none -O "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 2>&1 | grep -E "^(stat::number_of_executed_units|INFO: Running|==|SUMMARY|Done)|panicked" || true
  if ls "artifacts/$target"/crash-* >/dev/null 2>&1; then
    echo "fuzz: $target crashed; inputs in fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
