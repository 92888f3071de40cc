#!/bin/sh
# Builds {{name}}.wasm with componentize-py (pip install componentize-py==0.25.1).
set -eu
cd "$(dirname "$0")"
componentize-py -d wit -w policy componentize policy -o {{name}}.wasm
