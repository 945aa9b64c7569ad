#!/usr/bin/env bash
# Builds the images the compose deployment runs, from binaries built on the host (release;
# DOCKER_PROFILE=debug reuses a test build, as CI does):
#   tenancy:local           control-plane, tenant-router, tenantctl (Dockerfile, target prebuilt)
#   tenancy-postgres:local  PostgreSQL 15 with TLS (deploy/docker/postgres)
# Makes Docker ready first (scripts/docker-base.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
require_cargo
scripts/docker-base.sh
profile="${DOCKER_PROFILE:-release}"
case "$profile" in
  release) cargo build --release -q --bin control-plane --bin tenant-router --bin tenantctl ;;
  debug) cargo build -q --bin control-plane --bin tenant-router --bin tenantctl ;;
  *) echo "DOCKER_PROFILE must be release or debug, not $profile" >&2; exit 2 ;;
esac
rm -rf .docker-bin && mkdir .docker-bin
cp "target/$profile/control-plane" "target/$profile/tenant-router" "target/$profile/tenantctl" .docker-bin/
export DOCKER_BUILDKIT=1
/usr/bin/docker build -q --target prebuilt -t tenancy:local . >/dev/null
/usr/bin/docker build -q -t tenancy-postgres:local deploy/docker/postgres >/dev/null
echo "images: tenancy:local, tenancy-postgres:local"
