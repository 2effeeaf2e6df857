"""The prebuilt JupyterLab / Notebook 7 extension (labextension/), without a browser.

bootstrap.sh builds it into hpc_proxies/labextension/ and links it, with the server
extension's config, into the venv (an editable install does not install data-files);
a wheel carries both as data-files (pyproject's [tool.setuptools.data-files]).
"""

import json
import re
import subprocess
import sys
from pathlib import Path

from jupyter_core.paths import jupyter_config_path, jupyter_path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "labextension"
BUILT = ROOT / "hpc_proxies" / "labextension"
NAME = json.loads((SOURCE / "package.json").read_text())["name"]
BIN = Path(sys.executable).parent


def _installed_dir() -> Path:
    for base in jupyter_path("labextensions"):
        candidate = Path(base) / NAME
        if (candidate / "package.json").is_file():
            return candidate
    raise AssertionError(f"{NAME} is in none of {jupyter_path('labextensions')}")


def test_source_package_is_a_prebuilt_extension_into_the_python_package():
    data = json.loads((SOURCE / "package.json").read_text())
    assert data["jupyterlab"]["extension"] is True
    assert (SOURCE / data["jupyterlab"]["outputDir"]).resolve() == BUILT
    assert (SOURCE / "yarn.lock").is_file()


def test_built_extension_has_its_remote_entry():
    data = json.loads((BUILT / "package.json").read_text())
    assert data["name"] == NAME
    load = data["jupyterlab"]["_build"]["load"]
    assert re.fullmatch(r"static/remoteEntry\.[0-9a-f]+\.js", load), load
    assert (BUILT / load).is_file()
    assert (BUILT / "static" / "style.js").is_file()


def test_installed_where_jupyterlab_looks_and_the_same_build():
    installed = _installed_dir()
    load = json.loads((installed / "package.json").read_text())["jupyterlab"]["_build"]["load"]
    assert (installed / load).is_file()
    assert (installed / load).read_bytes() == (BUILT / load).read_bytes()


def test_labextension_list_shows_it_enabled_and_ok():
    out = subprocess.run(
        [str(BIN / "jupyter"), "labextension", "list"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    line = next((ln for ln in text.splitlines() if ln.strip().startswith(NAME + " ")), None)
    assert line is not None, text
    assert re.search(r"\benabled\b", line) and re.search(r"\bOK\b", line), line


def test_server_extension_config_is_installed_and_enables_hpc_proxies():
    source = ROOT / "jupyter-config" / "jupyter_server_config.d" / "hpc_proxies.json"
    assert json.loads(source.read_text()) == {
        "ServerApp": {"jpserver_extensions": {"hpc_proxies": True}}
    }
    found = [
        Path(d) / "jupyter_server_config.d" / "hpc_proxies.json"
        for d in jupyter_config_path()
        if (Path(d) / "jupyter_server_config.d" / "hpc_proxies.json").is_file()
    ]
    assert found, f"hpc_proxies.json is in none of {jupyter_config_path()}"


def test_wheel_data_files_name_the_built_extension_and_the_config():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data_files = pyproject["tool"]["setuptools"]["data-files"]
    dest = f"share/jupyter/labextensions/{NAME}"
    assert data_files[dest] == ["hpc_proxies/labextension/package.json"]
    assert data_files[f"{dest}/static"] == ["hpc_proxies/labextension/static/*"]
    assert data_files["etc/jupyter/jupyter_server_config.d"] == [
        "jupyter-config/jupyter_server_config.d/hpc_proxies.json"
    ]
