#!/usr/bin/env bash
# Run HERE (a Debian machine with the package registry), never on the GPU machine: downloads
# into .deps/ the .deb files of the build dependencies that the GPU machine (Ubuntu 24.04,
# CUDA 13, CMake 4, g++ 13, no package registry) lacks. Nothing is installed; the GPU side
# unpacks them into .deps/root with tools/device/run.sh. About 15 MB. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# Headers, CMake/pkg-config files and link-time libraries, plus the runtime libraries they pull
# in that a bare Ubuntu does not have (gfortran/quadmath for OpenBLAS, pkgconf for CMake's
# FindPkgConfig). googletest (GoogleTest's sources) is not needed: libgtest-dev ships the
# static libraries and CMake config.
packages=(
  libopenblas-dev libopenblas0 libopenblas0-pthread libopenblas-pthread-dev
  libgfortran5 libquadmath0
  libyaml-cpp-dev libyaml-cpp0.7
  libcli11-dev
  libfmt-dev libfmt9
  nlohmann-json3-dev
  libxxhash-dev libxxhash0
  libzstd-dev libzstd1
  libgtest-dev
  pkgconf pkgconf-bin libpkgconf3
)

mkdir -p .deps
cd .deps
# What tools/device/run.sh unpacks here is rebuilt on every run; dropping it keeps .deps/ (which
# is carried to the GPU machine) at the size of the .deb files.
rm -rf root runtime-lib pkg-config
missing=()
for p in "${packages[@]}"; do
  compgen -G "${p}_*.deb" >/dev/null || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "fetch-device-deps: all ${#packages[@]} packages already in .deps/"
  exit 0
fi
if ! apt-cache show "${missing[0]}" >/dev/null 2>&1; then
  apt-get update -qq
fi
# apt-get download warns when run as root that it cannot sandbox; the files are fine.
apt-get download "${missing[@]}" 2>&1 | grep -v "unsandboxed as root" || true
for p in "${packages[@]}"; do
  compgen -G "${p}_*.deb" >/dev/null || { echo "fetch-device-deps: $p was not downloaded" >&2; exit 1; }
done
echo "fetch-device-deps: $(ls ./*.deb | wc -l) packages, $(du -sh . | cut -f1) in .deps/"
