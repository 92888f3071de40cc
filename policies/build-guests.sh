#!/usr/bin/env bash
# Builds the JavaScript and Python example policies into components of the `policy` world:
# policies/target/guests/<name>-js.wasm and <name>-py.wasm. A module newer than its source and
# the WIT is kept. Needs componentize-js and componentize-py as tests/setup.sh installs them
# (under $PORTCULLIS_TOOLS).
set -euo pipefail
cd "$(dirname "$0")"
tools="${PORTCULLIS_TOOLS:-${HOME:-/root}/.cache/portcullis-tools}"
here="$PWD"; out="$here/target/guests"
mkdir -p "$out"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
cp -r ../wit "$work/wit"
cp js/build.mjs "$tools/js/build.mjs"

fresh() { [ -f "$1" ] && [ "$1" -nt "$2" ] && [ "$1" -nt ../wit/policy.wit ]; }

for src in js/*.js; do
  name="$(basename "$src" .js)"; wasm="$out/$name-js.wasm"
  fresh "$wasm" "$src" && continue
  echo "build-guests: $src"
  cp "$src" "$work/$name.js"
  (cd "$work" && node "$tools/js/build.mjs" "$name.js" "$wasm.tmp") && mv "$wasm.tmp" "$wasm"
done
for src in python/*.py; do
  module="$(basename "$src" .py)"; wasm="$out/${module//_/-}-py.wasm"
  fresh "$wasm" "$src" && continue
  echo "build-guests: $src"
  (cd "$work" && "$tools/componentize-py/bin/componentize-py" -d wit -w policy componentize \
      -p "$here/python" "$module" -o "$wasm.tmp" >/dev/null) && mv "$wasm.tmp" "$wasm"
done
