# The platform's image: control-plane, tenant-router and tenantctl on a slim Debian, run
# as a non-root user, with the PostgreSQL client tools backups and restores use.
#
#   docker build -t tenancy .                      # builds the binaries in a Rust stage
#   scripts/docker-build.sh                        # from binaries built on the host (CI,
#                                                  # machines without an image registry)
#
# Which daemon a container runs is its command: `control-plane`, `tenant-router`.

# The runtime every variant shares.
FROM debian:bookworm-slim AS runtime-base
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates postgresql-client tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/tenancy --create-home tenancy \
 && install -d -o tenancy -g tenancy -m 700 /var/lib/tenancy/backups
WORKDIR /var/lib/tenancy
USER 10001:10001
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["control-plane", "--help"]

# Binaries built on the host (same glibc as bookworm), copied from .docker-bin/.
FROM runtime-base AS prebuilt
COPY .docker-bin/control-plane .docker-bin/tenant-router .docker-bin/tenantctl /usr/local/bin/

# The standard build, for users with a registry.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin control-plane --bin tenantctl --bin tenant-router \
 && mkdir /out && cp target/release/control-plane target/release/tenantctl target/release/tenant-router /out/

FROM runtime-base AS runtime
COPY --from=build /out/ /usr/local/bin/
