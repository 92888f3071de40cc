#!/bin/sh
# Tests the policy's logic with the world's Python bindings (made by componentize-py).
set -eu
cd "$(dirname "$0")"
rm -rf .bindings
componentize-py -d wit -w policy bindings .bindings
PYTHONPATH=.bindings:. python3 -m unittest -v test_policy
