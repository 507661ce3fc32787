#!/usr/bin/env bash
# Downloads, on the host, every wheel the two image targets need, so that the image
# builds can run `pip install --no-index --find-links` with no network inside the build.
#   serve: CPU-only torch (this machine's /opt/wheels build) + the project's base deps
#   train: torch + torchvision (the versions the local venv uses) + the `train` extra
#   protogen (the throwaway stage that generates the gRPC stubs): grpcio-tools at the dev extra's pin
# Usage: scripts/ci_wheelhouse.sh DIR   (idempotent; a stamp file skips a repeat download)
set -euo pipefail
dest=${1:?usage: ci_wheelhouse.sh DIR}
here=$(cd "$(dirname "$0")/.." && pwd)
SERVE_TORCH_SPEC=${SERVE_TORCH_SPEC:-torch==2.13.0+cpu}
TRAIN_TORCH_SPEC=${TRAIN_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
PY=${PYTHON:-python3}

# Requirement lists straight from pyproject.toml, so the wheelhouse follows the project.
reqs=$("$PY" - "$here/pyproject.toml" <<'PYEOF'
import sys
import tomllib

with open(sys.argv[1], "rb") as fh:
    data = tomllib.load(fh)
base = [d for d in data["project"]["dependencies"] if not d.startswith("torch")]
train = [d for d in data["project"]["optional-dependencies"]["train"] if not d.startswith("torch")]
build = data["build-system"]["requires"]
tools = [d for d in data["project"]["optional-dependencies"]["dev"] if d.startswith("grpcio-tools")]
print("\t".join([" ".join(base + build + ["wheel"]), " ".join(train), " ".join(tools)]))
PYEOF
)
IFS=$'\t' read -r base_reqs train_reqs tools_reqs <<<"$reqs"
[ -n "$tools_reqs" ] || { echo "ci_wheelhouse: no grpcio-tools pin in the dev extra of pyproject.toml" >&2; exit 1; }
stamp="$dest/.complete-$(printf '%s|%s|%s|%s|%s' "$SERVE_TORCH_SPEC" "$TRAIN_TORCH_SPEC" "$base_reqs" "$train_reqs" "$tools_reqs" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  echo "wheelhouse: up to date in $dest ($(du -sh "$dest" | cut -f1))"
  exit 0
fi
mkdir -p "$dest"
# Host and images are both Debian bookworm x86_64 with CPython 3.11, so the host's own
# platform tags select the right wheels; binaries only, nothing is built from source.
common=(--dest "$dest" --only-binary=:all:)
# shellcheck disable=SC2086
"$PY" -m pip download -q "${common[@]}" $SERVE_TORCH_SPEC $base_reqs $tools_reqs
# shellcheck disable=SC2086
"$PY" -m pip download -q "${common[@]}" $TRAIN_TORCH_SPEC $base_reqs $train_reqs
touch "$stamp"
echo "wheelhouse: $(find "$dest" -name '*.whl' | wc -l) wheels, $(du -sh "$dest" | cut -f1) in $dest"
