#!/usr/bin/env bash
# Debian packages Ferry's PostgreSQL engine, its demo and its tests need: the PostgreSQL server binaries
# (initdb, pg_ctl, pg_basebackup, pgbench), an unprivileged `postgres` user to run them as, and the lz4
# and zstd tools the tests compress WAL with.
# Installs what is missing when run as root on a Debian-like system; says what to install otherwise.
set -euo pipefail
missing=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
# The tests archive WAL the ways other tools do: compressed by the lz4 and zstd command-line tools.
command -v lz4 >/dev/null 2>&1 || missing+=(lz4)
command -v zstd >/dev/null 2>&1 || missing+=(zstd)
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "ferry: installing ${missing[*]} (Debian packages)" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "ferry: PostgreSQL features need: apt-get install ${missing[*]}" >&2
    exit 0
  fi
fi
if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi
