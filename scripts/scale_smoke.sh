#!/usr/bin/env bash
# The multi-replica smoke test (`make scale-smoke`, in .ci/run after the compose smoke): real processes, no
# containers, everything on 127.0.0.1, ports 18901-18940 (see docs/scaling.md, "Multi-replica smoke (real)"):
#   apt: haproxy, prometheus, prometheus-alertmanager, wrk (installed when missing; needs root or sudo)
#   -> two small artifacts (seeds 0 and 1, trained in parallel; cached in $CI_CACHE/scale-models and reused
#      while valid)
#   -> scripts/scale_run.py: 3 replicas behind HAProxy, Prometheus (1 s scrapes, the real rules with
#      McserveApiDown's `for:` shortened), Alertmanager -> webhook, wrk load throughout; load spread, dashboard
#      aggregation, kill -9 (retries, alert fired and resolved), rolling update (drain, 0 failures); one figure line.
# Prints each step's duration. Every process is stopped by PID at the end, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=$VENV/bin/python
CI_CACHE=${CI_CACHE:-/var/cache/mcserve-ci}
MODELS=${MCSERVE_SCALE_MODELS:-$CI_CACHE/scale-models}
T0=$(date +%s)

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

install_packages() {  # Debian packages; the services they ship are not started here (the test runs its own)
  local missing="" pkg
  for pkg in haproxy prometheus prometheus-alertmanager wrk; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
  done
  if [ -n "$missing" ]; then
    log "apt-get install$missing"
    as_root apt-get update -q >/dev/null
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends $missing >/dev/null
  fi
  echo "haproxy $(haproxy -v | sed -n '1s/HAProxy version \([^ ]*\).*/\1/p'), $(prometheus --version 2>&1 | sed -n 1p | cut -d' ' -f1-3)," \
    "$(prometheus-alertmanager --version 2>&1 | sed -n 1p | cut -d' ' -f1-3), $(wrk -v 2>&1 | sed -n 1p | cut -d' ' -f1-2)"
}

train() {  # two small artifacts with different seeds (the roll's old and new model), in parallel, one thread each
  mkdir -p "$MODELS"
  local seed pids=() rc=0
  for seed in 0 1; do
    nice -n 5 "$PY" -m training --out "$MODELS/seed$seed" --epochs 1 --train-limit 3000 --mc-samples 10 --no-plots \
      --seed "$seed" --threads 1 --skip-if-valid >"$MODELS/train-seed$seed.log" 2>&1 &
    pids+=($!)
  done
  for seed in 0 1; do
    wait "${pids[$seed]}" || { rc=$?; tail -n 20 "$MODELS/train-seed$seed.log" >&2; }
  done
  [ $rc -eq 0 ] || return $rc
  grep -h -E "artifact .* written|already holds valid artifact" "$MODELS"/train-seed0.log "$MODELS"/train-seed1.log
}

timed() {  # timed "name" command...
  local name=$1 start
  shift
  log "==> $name"
  start=$(date +%s.%N)
  "$@"
  printf '%7.1f s  %s\n' "$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')" "$name"
}

[ -x "$PY" ] || { echo "scale smoke: $PY missing; run make install first" >&2; exit 1; }
timed "apt: haproxy, prometheus, prometheus-alertmanager, wrk" install_packages
timed "train two small artifacts (seeds 0, 1; cached)" train
rc=0
"$PY" scripts/scale_run.py --old-model "$MODELS/seed0" --new-model "$MODELS/seed1" --python "$PY" || rc=$?
echo "scale smoke: total $(($(date +%s) - T0)) s"
if [ $rc -eq 0 ]; then echo "scale smoke: PASS"; else echo "scale smoke: FAIL (exit $rc)" >&2; fi
exit $rc
