#!/usr/bin/env bash
# The main job: install dependencies, build, then generate data, train, evaluate and recommend.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
./build/genrec demo "$@"
