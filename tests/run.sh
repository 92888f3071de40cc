#!/usr/bin/env bash
# The test command: installs what the tests need (idempotent), builds the policy modules once,
# then runs every test. `tests/run.sh --extended` also runs 200 SIGKILLs instead of 25, a
# three-minute soak instead of 20 s, and each fuzz target for 60 s (tests/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
extended=false
[ "${1:-}" = "--extended" ] && extended=true
bash tests/setup.sh
export PATH="${PORTCULLIS_TOOLS:-${HOME:-/root}/.cache/portcullis-tools}/bin:$PATH"
if $extended; then
  export PORTCULLIS_KILLS=200 PORTCULLIS_SOAK_SECS=180
fi
for ws in policies tests/policies; do
  (cd "$ws" && cargo build --locked --quiet --release --target wasm32-wasip2)
done
policies/build-guests.sh
policies/test-guests.sh
(cd policies && cargo test --locked --quiet)
cargo test --locked --all-targets
bench/run.sh --quick
if $extended; then
  tests/fuzz.sh 60
fi
