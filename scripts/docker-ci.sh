#!/usr/bin/env bash
# Set up the docker test tier on a fresh Debian machine (run as root). Idempotent: run again, it reuses what exists.
#   1. installs docker.io and debootstrap (scripts/system-deps.sh)
#   2. starts dockerd in the background (no bridge, no iptables: containers use host networking or 127.0.0.1)
#   3. makes a base image locally with debootstrap (no registry is needed), carrying this machine's pip CA bundle
#   4. builds docker/diffusers/Dockerfile against it with CPU torch (the wheel from pip's find-links folder), and
#      the test responder image (tests/docker/responder.Dockerfile)
#   5. starts a second dockerd (own socket, data root, exec root) standing in for a remote host, loads the images
# Environment (all optional): HUB_DOCKER_WORK (work folder), HUB_REMOTE_DOCKER (socket URL of the stand-in remote
# daemon, as the tests read it), HUB_BASE_IMAGE, HUB_DIFFUSERS_IMAGE.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${HUB_DOCKER_WORK:-/var/lib/hub-docker-ci}
REMOTE=${HUB_REMOTE_DOCKER:-unix:///run/hub-remote-docker/docker.sock}
REMOTE_SOCK=${REMOTE#unix://}
BASE_IMAGE=${HUB_BASE_IMAGE:-hub-base:bookworm}
DIFFUSERS_IMAGE=${HUB_DIFFUSERS_IMAGE:-hub-diffusers:latest}
RESPONDER_IMAGE=hub-responder:latest
say() { echo "docker-ci: $*"; }
pipconf() {  # pipconf KEY: a value from this machine's pip configuration (`pip config list`), "" if unset
  python3 -m pip config list 2>/dev/null | sed -n "s/^[^=]*\.$1='\(.*\)'$/\1/p" | head -1
}
mkdir -p "$WORK"

# 1. packages
bash "$ROOT/scripts/system-deps.sh"

# 2. the local daemon
wait_for() {  # wait_for DOCKER_HOST_URL LOGFILE: until the daemon answers (60 s)
  for _ in $(seq 120); do docker -H "$1" info >/dev/null 2>&1 && return 0; sleep 0.5; done
  say "dockerd at $1 did not come up; its log:"; tail -20 "$2"; exit 1
}
if docker info >/dev/null 2>&1; then
  say "dockerd already running"
else
  say "starting dockerd (--bridge=none --iptables=false), log in $WORK/dockerd.log"
  nohup dockerd --bridge=none --iptables=false >"$WORK/dockerd.log" 2>&1 &
  wait_for unix:///var/run/docker.sock "$WORK/dockerd.log"
fi

# 3. the base image: Debian minbase + python3, venv, pip, CA certificates, this machine's pip CA bundle and config
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  say "base image $BASE_IMAGE exists"
else
  . /etc/os-release
  SUITE=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
  # the Debian URI of the machine's apt sources (deb822 .sources files or one-line sources.list files)
  MIRROR=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk -v s="$SUITE" '
      /^URIs:/ {u=$2} /^Suites:/ {for (i=2;i<=NF;i++) if ($i==s) {print u; exit}}')
  if [ -z "$MIRROR" ]; then
    MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | awk -v s="$SUITE" '$1=="deb" {for (i=2;i<=NF;i++) if ($i==s) {u=$(i-1); sub(/^\[.*\]$/,"",u); print u; exit}}')
  fi
  [ -n "$MIRROR" ] || { say "no Debian mirror for $SUITE found in /etc/apt/sources.list*"; exit 1; }
  ROOTFS="$WORK/rootfs"
  rm -rf "$ROOTFS"
  say "debootstrap $SUITE from $MIRROR (about a minute)"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; exit 1; }
  # pip inside containers must trust what this machine's pip trusts: copy its CA bundle over the image's own,
  # and carry the pip settings that are not paths of this machine (find-links, file:// indexes stay behind)
  CERT=$(pipconf cert)
  if [ -n "$CERT" ] && [ -f "$CERT" ]; then
    say "carrying pip's CA bundle $CERT"
    cp "$CERT" "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
  fi
  {
    echo "[global]"
    echo "cert = /etc/ssl/certs/ca-certificates.crt"
    for key in index-url extra-index-url trusted-host timeout default-timeout; do
      val=$(pipconf "$key")
      kept=$(for v in $val; do case "$v" in file:*|/*) ;; *) printf '%s ' "$v" ;; esac; done)
      [ -n "${kept// /}" ] && echo "$key = ${kept% }"
    done
  } >"$ROOTFS/etc/pip.conf"
  say "pip config of the base image: $(tr '\n' ' ' <"$ROOTFS/etc/pip.conf")"
  tar -C "$ROOTFS" -c . | docker import - "$BASE_IMAGE" >/dev/null
  rm -rf "$ROOTFS"
  say "made $BASE_IMAGE"
fi

# 4. the engine images (docker's layer cache makes a rebuild without changes take seconds)
TORCH=$(sed -n 's/^torch==\([^+ ]*\).*/\1/p' "$ROOT/locks/diffusers-cpu.txt")
FIND_LINKS=$(pipconf find-links)
WHEELS="$ROOT/docker/diffusers/wheels"
for dir in $FIND_LINKS; do
  for whl in "${dir#file://}"/torch-"$TORCH"+cpu-*.whl; do
    [ -f "$whl" ] || continue
    if ! cmp -s "$whl" "$WHEELS/$(basename "$whl")"; then
      say "copying the CPU torch wheel $(basename "$whl") into the build context"
      cp "$whl" "$WHEELS/"
    fi
  done
done
ls "$WHEELS"/torch-*.whl >/dev/null 2>&1 || { say "no CPU torch wheel ($TORCH+cpu) in pip's find-links: locks/diffusers-cpu.txt cannot be installed"; exit 1; }
IMAGES=("$RESPONDER_IMAGE")
if [ -f "$ROOT/imageserver/app.py" ]; then
  say "building $DIFFUSERS_IMAGE from docker/diffusers/Dockerfile and locks/diffusers-cpu.txt on $BASE_IMAGE (first time: a few minutes)"
  docker build -q --network host -f "$ROOT/docker/diffusers/Dockerfile" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg LOCK=diffusers-cpu -t "$DIFFUSERS_IMAGE" "$ROOT" >/dev/null
  IMAGES+=("$DIFFUSERS_IMAGE")
else
  say "warning: imageserver/ is missing: $DIFFUSERS_IMAGE not built"
fi
say "building $RESPONDER_IMAGE (the test responder in a container)"
docker build -q --network host -f "$ROOT/tests/docker/responder.Dockerfile" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
  -t "$RESPONDER_IMAGE" "$ROOT" >/dev/null

# 5. the stand-in remote host: a second daemon with its own socket, data root, exec root and pidfile
R="$WORK/remote"
if docker -H "$REMOTE" info >/dev/null 2>&1; then
  say "second dockerd already running at $REMOTE"
else
  mkdir -p "$R/data" "$(dirname "$REMOTE_SOCK")"
  say "starting a second dockerd at $REMOTE (stand-in remote host), log in $R/dockerd.log"
  nohup dockerd -H "$REMOTE" --data-root "$R/data" --exec-root "$(dirname "$REMOTE_SOCK")/exec" \
    --pidfile "$R/docker.pid" --bridge=none --iptables=false >"$R/dockerd.log" 2>&1 &
  wait_for "$REMOTE" "$R/dockerd.log"
fi
for image in "${IMAGES[@]}"; do
  want=$(docker image inspect -f '{{.Id}}' "$image")
  have=$(docker -H "$REMOTE" image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
  if [ "$want" = "$have" ]; then
    say "$image is up to date on the second dockerd"
  else
    say "loading $image into the second dockerd"
    docker save "$image" | docker -H "$REMOTE" load -q >/dev/null
  fi
done
say "ready: local dockerd and $REMOTE with ${IMAGES[*]} (base $BASE_IMAGE)"
