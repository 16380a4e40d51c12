#!/usr/bin/env bash
# Make .venv with Ferry and its test tools installed. Fast when nothing changed since the last run.
# Installs Debian's python3-venv first when this Python cannot make virtual environments (fresh Debian).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.ferry-installed"

python=""
# The system's Python first: PostgreSQL's processes run Ferry (archive_command, restore_command) as an
# unprivileged user, who cannot execute an interpreter kept under /root (pyenv and the like).
for candidate in /usr/bin/python3.13 /usr/bin/python3.12 /usr/bin/python3.11 /usr/bin/python3 \
                 python3.13 python3.12 python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    python="$candidate"; break
  fi
done
if [[ -z "$python" ]]; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
    python=python3
  else
    echo "ferry: needs Python 3.11 or newer (apt-get install python3 python3-venv)" >&2; exit 2
  fi
fi

python="$(command -v "$python")"
if [[ -f "$stamp" && "$stamp" -nt "$root/pyproject.toml" && -x "$venv/bin/ferry" &&
      "$(cat "$stamp")" == "$python" ]]; then
  exit 0
fi

if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "ferry: installing python3-venv" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  else
    echo "ferry: this Python cannot create virtual environments: apt-get install python3-venv" >&2; exit 2
  fi
fi

echo "ferry: setting up $venv (first run only)" >&2
"$root/scripts/system-deps.sh"
rm -rf "$venv"
"$python" -m venv "$venv"
log="$venv/install.log"
if ! { "$venv/bin/python" -m pip install --upgrade pip &&
       "$venv/bin/python" -m pip install -e "$root[dev]"; } >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  echo "ferry: installing Python packages failed; the whole log is in $log" >&2
  exit 2
fi
echo "$python" > "$stamp"
