#!/usr/bin/env bash
# Makes sure Docker can build the project's images on a machine without an image
# registry: installs Debian's docker.io, docker-compose and debootstrap when missing,
# starts dockerd when it is not running (fails if it cannot), and makes the base image
# `debian:bookworm-slim` locally with debootstrap when the daemon lacks it
# (see ../shared/reference/containers.md). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
require_tool dockerd docker.io
require_tool docker-compose docker-compose
require_tool debootstrap debootstrap
DOCKER=/usr/bin/docker
if ! "$DOCKER" info >/dev/null 2>&1; then
  echo "starting dockerd" >&2
  nohup dockerd >/tmp/dockerd.log 2>&1 &
  for _ in $(seq 1 150); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 0.2; done
  "$DOCKER" info >/dev/null 2>&1 || { cat /tmp/dockerd.log >&2; echo "dockerd did not start" >&2; exit 1; }
fi
if ! "$DOCKER" image inspect debian:bookworm-slim >/dev/null 2>&1; then
  echo "making debian:bookworm-slim with debootstrap (about a minute)" >&2
  # The machine's own Debian mirror (not comments, not the security archive).
  mirror=$(grep -rhE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
    | grep -oE 'https?://[^ ]+/debian/?$' | head -1 || true)
  mirror="${mirror:-http://deb.debian.org/debian}"
  rootfs=$(mktemp -d)
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/tmp/debootstrap.log 2>&1 \
    || { tail -20 /tmp/debootstrap.log >&2; exit 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | "$DOCKER" import -c 'CMD ["/bin/bash"]' - local/debian:bookworm >/dev/null
  "$DOCKER" tag local/debian:bookworm debian:bookworm-slim
  rm -rf "$rootfs"
fi
