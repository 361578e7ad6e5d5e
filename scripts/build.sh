#!/usr/bin/env bash
# Configures and builds genrec into build/ (CUDA when nvcc is found; GENREC_CUDA=OFF|ON overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DGENREC_CUDA="${GENREC_CUDA:-AUTO}" >/dev/null
cmake --build build -j"$(nproc)"
