#!/usr/bin/env bash
# Set up hpc-proxies on a Debian machine, then run JupyterLab or the whole test suite.
#
#   ./bootstrap.sh lab    install everything, start JupyterLab with every tile, print its URL
#   ./bootstrap.sh test   install everything, then ruff, the docs build and the whole test suite
#
# As root it installs the Debian packages (apt-get update first); as another user it
# checks they are there and says which are missing. Python packages go into a venv
# (.venv, or $HPC_PROXIES_VENV), with hpc-proxies installed editable from this checkout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
mode="${1:-}"
case "$mode" in
  lab|test) ;;
  *) echo "usage: $0 lab|test" >&2; exit 2 ;;
esac

# Debian packages: the apps, what their sessions run, the tools the tests use, a browser.
apt_packages=(
  python3 python3-venv python3-pip
  xpra python3-pil python3-lz4 xvfb xterm xauth x11-utils xclip
  tigervnc-standalone-server tigervnc-tools novnc openbox x11-xserver-utils
  paraview python3-paraview python3-ipykernel
  iproute2 procps util-linux
  chromium fonts-dejavu-core xfonts-base
  ca-certificates
)
# Executables those packages provide, checked when we cannot install as root.
needed_commands=(python3 pvserver xpra Xvfb xterm xdpyinfo xclip vncserver vncpasswd openbox xrandr ss setpriv chromium)

say() { printf '\n==> %s\n' "$*"; }

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  say "apt-get update && apt-get install (${#apt_packages[@]} packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${apt_packages[@]}"
else
  missing=()
  for c in "${needed_commands[@]}"; do command -v "$c" >/dev/null || missing+=("$c"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "Missing: ${missing[*]}. As root, run this script again, or: apt-get install ${apt_packages[*]}" >&2
    [ "$mode" = test ] && exit 1
  fi
fi

python="${PYTHON:-python3}"
"$python" - <<'EOF'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"hpc-proxies needs Python >= 3.10, this is {sys.version.split()[0]}")
EOF

venv="${HPC_PROXIES_VENV:-$here/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  say "creating the venv $venv"
  "$python" -m venv "$venv"
fi
say "pip install -e .[test,docs]"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e ".[test,docs]"
say "the ParaView (pvpython) kernel"
"$venv/bin/hpc-proxies" install-kernel paraview --sys-prefix

root_flag=()
[ "$(id -u)" -eq 0 ] && root_flag=(--allow-root)

if [ "$mode" = lab ]; then
  port="${HPC_PROXIES_PORT:-8888}"
  ip="${HPC_PROXIES_IP:-127.0.0.1}"
  token="$("$venv/bin/python" -c 'import secrets; print(secrets.token_hex(24))')"
  say "JupyterLab with the hpc-proxies tiles (Ctrl-C stops it and every app)"
  echo "    open: http://$ip:$port/lab?token=$token"
  # The token goes by environment, not argv: argv is world-readable in /proc.
  JUPYTER_TOKEN="$token" exec "$venv/bin/jupyter" lab --no-browser "${root_flag[@]}" \
    --ServerApp.ip="$ip" --ServerApp.port="$port" --ServerApp.port_retries=0
fi

say "ruff"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
say "docs (sphinx-build -W: a warning or a broken cross-reference fails)"
"$venv/bin/sphinx-build" -W --keep-going -q -b html docs docs/_build/html
say "pytest"
exec "$venv/bin/python" -m pytest -ra --durations=25 "${@:2}"
