#!/usr/bin/env bash
# Installs everything the tests and the local path need: Debian packages (the real
# Fashion-MNIST, Prometheus for promtool and live scrape tests, wrk for benchmarks)
# and a virtual environment with torch and the project, with its generated gRPC stubs.
set -euo pipefail
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
APT_PACKAGES="dataset-fashion-mnist prometheus wrk"

missing=""
for pkg in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  echo "install: apt packages:$missing"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install -q $TORCH_SPEC
"$VENV/bin/python" -m pip install -q -e ".[train,dev]"
# The v2 gRPC stubs from service/v2/protos/*.proto (git-ignored, never edited). Run as a file, the way
# `python -m service.v2.protogen` does it, but without importing the service package first.
"$VENV/bin/python" service/v2/protogen.py
# The C Monte Carlo kernel and JSON pixel parser (service/native/*.so, git-ignored): need a C compiler (Debian: gcc).
if ! command -v "${CC:-cc}" >/dev/null; then
  echo "install: apt packages: gcc libc6-dev (no C compiler)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends gcc libc6-dev
fi
"$VENV/bin/python" service/native/build.py
echo "install: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
