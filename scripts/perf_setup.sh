#!/usr/bin/env bash
# Creates the separate venv of `python -m bench v2`: NVIDIA's perf_analyzer (bundled in the tritonclient 2.51.0
# wheel; later wheels no longer ship it) plus the CUDA runtime library it links, and tritonclient's gRPC stubs for
# bench/peers/grpc_floor.py. perf_analyzer runs without a GPU; it only needs libcudart.so.12 to load.
# Idempotent: a second run installs nothing new. Prints the perf_analyzer path and version last.
set -euo pipefail
cd "$(dirname "$0")/.."
PERF_VENV=${PERF_VENV:-.venv-perf}
TRITONCLIENT=${PERF_TRITONCLIENT:-tritonclient[grpc,http]==2.51.0}
BASE_PYTHON=${PERF_BASE_PYTHON:-$(command -v /usr/bin/python3.11 || command -v python3)}

# perf_analyzer links Debian's libb64 (base64 of the JSON input data)
if ! ldconfig -p | grep -q 'libb64\.so\.0d'; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -q libb64-0d >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q libb64-0d >/dev/null; }
  else
    sudo apt-get install -y -q libb64-0d >/dev/null
  fi
fi

[ -x "$PERF_VENV/bin/python" ] || "$BASE_PYTHON" -m venv "$PERF_VENV"
if ! "$PERF_VENV/bin/python" -c 'import tritonclient.grpc.service_pb2_grpc, nvidia.cuda_runtime' 2>/dev/null \
  || [ ! -x "$PERF_VENV/bin/perf_analyzer" ]; then
  "$PERF_VENV/bin/python" -m pip install -q --upgrade pip
  "$PERF_VENV/bin/python" -m pip install -q "$TRITONCLIENT" nvidia-cuda-runtime-cu12
fi

cudart_lib=$("$PERF_VENV/bin/python" -c 'import nvidia.cuda_runtime, os; print(os.path.join(nvidia.cuda_runtime.__path__[0], "lib"))')
echo "perf_setup: LD_LIBRARY_PATH=$cudart_lib"
echo "perf_setup: perf_analyzer $(realpath "$PERF_VENV/bin/perf_analyzer")"
LD_LIBRARY_PATH="$cudart_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$PERF_VENV/bin/perf_analyzer" --version
