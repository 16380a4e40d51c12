#!/usr/bin/env bash
# Debian packages Ferry's PostgreSQL engine, its demo and its tests need: the PostgreSQL server binaries
# (initdb, pg_ctl, pg_basebackup, pgbench) and an unprivileged `postgres` user to run them as.
# Installs what is missing when run as root on a Debian-like system; says what to install otherwise.
set -euo pipefail
missing=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
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
