#!/usr/bin/env bash
# Tests the logic of the JavaScript and Python example policies natively: Node.js runs
# js/test.mjs; Python runs python/tests/test_examples.py with the world's bindings made by
# componentize-py (as tests/setup.sh installs it under $PORTCULLIS_TOOLS).
set -euo pipefail
cd "$(dirname "$0")"
tools="${PORTCULLIS_TOOLS:-${HOME:-/root}/.cache/portcullis-tools}"
node js/test.mjs
bindings="$(mktemp -d)"; trap 'rm -rf "$bindings"' EXIT
"$tools/componentize-py/bin/componentize-py" -d ../wit -w policy bindings "$bindings" >/dev/null
PYTHONPATH="$bindings:python" PYTHONDONTWRITEBYTECODE=1 python3 python/tests/test_examples.py 2>&1
