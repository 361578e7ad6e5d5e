#!/usr/bin/env bash
# Installs the Debian packages genrec builds against. Safe to run again; skips when all are present.
set -euo pipefail
packages=(
  build-essential cmake pkg-config
  libopenblas-dev      # CPU GEMM
  libyaml-cpp-dev      # model and training configs
  libcli11-dev         # command line
  libfmt-dev           # formatting and logging
  nlohmann-json3-dev   # checkpoint metadata, JSONL converter
  libxxhash-dev        # 64-bit id hashing, shard checksums
  libzstd-dev          # shard block compression
  librocksdb-dev       # optional disk tier of the embedding tables (CMake skips it when absent)
  libgtest-dev         # tests
  clang-format
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
