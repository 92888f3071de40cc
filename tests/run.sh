#!/usr/bin/env bash
# The test command: installs what the tests need (idempotent), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
export PATH="${PORTCULLIS_TOOLS:-${HOME:-/root}/.cache/portcullis-tools}/bin:$PATH"
cargo test --locked --all-targets
