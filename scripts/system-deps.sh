#!/usr/bin/env bash
# Debian packages Ferry's PostgreSQL engine, its demo and its tests need: the PostgreSQL server binaries
# (initdb, pg_ctl, pg_basebackup, pgbench), an unprivileged `postgres` user to run them as, the lz4
# and zstd tools the tests compress WAL with, Samba's smbd for the SMB store tests, and Chromium, which
# the web console's browser tests drive headless (playwright with executable_path). And Azurite, the
# Azure Blob emulator, from npm into .tools/ (not global).
# Installs what is missing when run as root on a Debian-like system; says what to install otherwise.
set -euo pipefail
missing=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
# The tests archive WAL the ways other tools do: compressed by the lz4 and zstd command-line tools.
command -v lz4 >/dev/null 2>&1 || missing+=(lz4)
command -v zstd >/dev/null 2>&1 || missing+=(zstd)
{ [[ -x /usr/sbin/smbd ]] && command -v smbpasswd >/dev/null 2>&1; } || missing+=(samba)
# The console tests drive this browser; playwright never downloads one.
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
# npm (with Node) installs Azurite below, for the Azure Blob tests.
command -v npm >/dev/null 2>&1 || missing+=(npm)
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "ferry: installing ${missing[*]} (Debian packages)" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "ferry: PostgreSQL features, the SMB and the browser tests need: apt-get install ${missing[*]}" >&2
  fi
fi
if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

# Azurite, pinned, into the checkout's .tools/ (git ignores it). The tests find it there.
azurite_version=3.35.0
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
if [[ "$(cat "$tools/.azurite-version" 2>/dev/null)" != "$azurite_version" || ! -x "$tools/node_modules/.bin/azurite-blob" ]]; then
  if command -v npm >/dev/null 2>&1; then
    echo "ferry: installing azurite $azurite_version into $tools (npm)" >&2
    mkdir -p "$tools"
    if npm install --prefix "$tools" --no-audit --no-fund --loglevel=error "azurite@$azurite_version" >/dev/null; then
      echo "$azurite_version" > "$tools/.azurite-version"
    else
      echo "ferry: npm install azurite failed; the Azure Blob tests will skip" >&2
    fi
  else
    echo "ferry: the Azure Blob tests need node and npm (apt-get install nodejs npm)" >&2
  fi
fi
