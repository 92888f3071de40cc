#!/usr/bin/env bash
# The test command: installs what the tests need (idempotent), builds the policy modules once,
# then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
export PATH="${PORTCULLIS_TOOLS:-${HOME:-/root}/.cache/portcullis-tools}/bin:$PATH"
for ws in policies tests/policies; do
  (cd "$ws" && cargo build --locked --quiet --release --target wasm32-wasip2)
done
(cd policies && cargo test --locked --quiet)
cargo test --locked --all-targets
bench/run.sh --quick
