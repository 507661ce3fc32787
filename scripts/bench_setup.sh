#!/usr/bin/env bash
# Creates the separate venv for the peer servers of `python -m bench http`
# (LitServe, TorchServe, PyTriton) so they never enter the project's own deps.
# It reuses the project venv's torch through a .pth file (no second 2 GB torch).
set -euo pipefail
cd "$(dirname "$0")/.."
MAIN_VENV=${VENV:-.venv}
BENCH_VENV=${BENCH_VENV:-.venv-bench}
PEERS=${BENCH_PEERS:-"litserve torchserve torch-model-archiver nvidia-pytriton"}
# PyTriton's Python-backend stub links the system libpython3.11, so the venv's standard library must be the
# system one too (a pyenv 3.11.7 stdlib crashes that stub); fall back to python3 where there is none.
BASE_PYTHON=${BENCH_BASE_PYTHON:-$(command -v /usr/bin/python3.11 || command -v python3)}

[ -x "$BENCH_VENV/bin/python" ] || "$BASE_PYTHON" -m venv "$BENCH_VENV"
main_site=$("$MAIN_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
bench_site=$("$BENCH_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# The project venv (torch, safetensors, mcnet) goes *after* the bench venv's own packages.
echo "$main_site" > "$bench_site/zz_mcserve_main.pth"
echo "$(pwd)" >> "$bench_site/zz_mcserve_main.pth"
"$BENCH_VENV/bin/python" -m pip install -q --upgrade pip
# shellcheck disable=SC2086
for peer in $PEERS; do
  # one at a time, so a peer that fails to install does not take the others with it
  "$BENCH_VENV/bin/python" -m pip install -q "$peer" || echo "bench_setup: could not install $peer" >&2
done
"$BENCH_VENV/bin/python" - <<'PY'
import importlib
for name in ("torch", "mcnet", "litserve", "ts", "pytriton"):
    try:
        mod = importlib.import_module(name)
        print(f"bench_setup: {name} ok ({getattr(mod, '__version__', '?')})")
    except Exception as exc:  # report, do not fail: the bench records peers that cannot run
        print(f"bench_setup: {name} unavailable: {exc!r}")
PY
