# Shared helpers for the project's scripts (sourced, not run).

# Prints the directory holding the PostgreSQL server binaries, installing them through the
# OS package manager when the machine has none.
pg_bindir() {
  if [ -n "${PG_BINDIR:-}" ] && [ -x "$PG_BINDIR/postgres" ]; then echo "$PG_BINDIR"; return; fi
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -n "$found" ] && [ -x "$found/postgres" ]; then echo "$found"; return; fi
  if command -v postgres >/dev/null 2>&1; then dirname "$(command -v postgres)"; return; fi
  echo "PostgreSQL server binaries not found; installing them with apt-get" >&2
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-contrib >&2
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$found" ]; then echo "could not install PostgreSQL" >&2; return 1; fi
  echo "$found"
}

# Makes sure cargo is there (the machine's toolchain; nothing is downloaded here).
require_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install the Rust toolchain (https://rustup.rs) first" >&2
    return 1
  fi
}

# A random URL-safe secret of 32 bytes.
random_secret() {
  head -c 32 /dev/urandom | base64 | tr -d '\n=' | tr '+/' '-_'
}

# Makes sure a command is there, installing the Debian package that has it when missing.
require_tool() {
  local tool="$1" package="${2:-$1}"
  command -v "$tool" >/dev/null 2>&1 && return 0
  echo "$tool not found; installing $package with apt-get" >&2
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >&2
}

# Makes sure s3s-fs (an S3-compatible server keeping objects as files; the backup tests
# use it) is installed, from crates.io when missing.
require_s3s_fs() {
  command -v s3s-fs >/dev/null 2>&1 && return 0
  echo "s3s-fs not found; installing it from crates.io" >&2
  cargo install s3s-fs --locked --version 0.14.1 --features binary >&2
}

# Makes sure the Python tools the tests use are in .venv-tools (grpcio's reflection client,
# the offline Kubernetes schema validator), from PyPI when missing; prints its python.
require_py_tools() {
  local venv=.venv-tools
  if ! "$venv/bin/python" -c 'import grpc_reflection, kubernetes_validate' >/dev/null 2>&1; then
    echo "installing the test tools (grpcio-reflection, kubernetes-validate) into $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q grpcio==1.76.0 grpcio-reflection==1.76.0 kubernetes-validate==1.34.1 >&2
  fi
  echo "$PWD/$venv/bin/python"
}
