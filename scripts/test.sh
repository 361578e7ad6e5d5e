#!/usr/bin/env bash
# Builds genrec and runs every test (CUDA tests skip themselves when no GPU is present).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
ctest --test-dir build --output-on-failure -j"$(nproc)"
