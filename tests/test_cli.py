"""The installed ``hpc-proxies`` console script, run as an admin would run it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from network import WITHOUT_USER_NAMESPACES

CLI = shutil.which("hpc-proxies", path=str(Path(sys.executable).parent))

THREE_SYSTEMS = """
[apps.xpra]
timeout = 45

[systems.jureca]
description = "JURECA login nodes"
match = ["jrlogin*"]
[systems.jureca.apps.xpra]
setup = "export XPRA_SITE=jureca"
title = "JURECA Desktop"

[systems.juwels]
match = ["jwlogin*"]
[systems.juwels.apps.xpra]
enabled = false

[systems.laptop]
match = ["*"]
"""


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    assert CLI, "the hpc-proxies console script is not installed next to this Python"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HPC_PROXIES_")}
    full_env.update(env or {})
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=full_env, timeout=60)


@pytest.fixture
def three(tmp_path) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(THREE_SYSTEMS)
    return path


def test_check_accepts_a_good_file(three):
    done = run("check", str(three), env={"HPC_PROXIES_SYSTEM": "jureca"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{three}: OK" in done.stdout
    assert "system here: jureca" in done.stdout


def test_check_rejects_a_bad_file_with_every_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[apps.xpra]\ntimout = 5\nenabled = "no"\n[systems.x]\nmatch = "x*"\n')
    done = run("check", str(bad))
    assert done.returncode == 1
    assert f"{bad}: apps.xpra.timout: unknown key (did you mean 'timeout'?)" in done.stdout
    assert f"{bad}: apps.xpra.enabled: expected true or false, got 'no'" in done.stdout
    assert f"{bad}: systems.x.match: expected a non-empty list of hostname globs" in done.stdout
    assert "3 problem(s)" in done.stdout


def test_check_reports_the_line_of_a_syntax_error(tmp_path):
    bad = tmp_path / "syntax.toml"
    bad.write_text("[apps.xpra]\ntimeout = = 5\n")
    done = run("check", str(bad))
    assert done.returncode == 1
    assert f"{bad}: line 2: TOML syntax error" in done.stdout


def test_status_shows_files_system_and_each_app(three):
    done = run("status", env={"HPC_PROXIES_CONFIG": str(three), "HPC_PROXIES_SYSTEM": "jureca"})
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"Configuration: {three} (from $HPC_PROXIES_CONFIG)" in out
    assert "System: jureca: HPC_PROXIES_SYSTEM=jureca" in out
    assert "xpra: JURECA Desktop at /xpra/, enabled" in out
    assert "executable: /usr/bin/xpra" in out
    assert "version: xpra v3.1" in out
    assert f'setup = "export XPRA_SITE=jureca"    [{three}: systems.jureca.apps.xpra.setup]' in out
    assert f"timeout = 45    [{three}: apps.xpra.timeout]" in out
    assert 'mode = "seamless"    [default]' in out


def test_status_says_what_disabled_an_app(three):
    done = run("status", env={"HPC_PROXIES_CONFIG": str(three), "HPC_PROXIES_SYSTEM": "juwels"})
    assert done.returncode == 0
    assert (
        "xpra: Xpra Desktop at /xpra/, DISABLED: disabled on system 'juwels' by the site "
        f"configuration ({three}: systems.juwels.apps.xpra.enabled)"
    ) in done.stdout


def test_status_json_and_a_missing_executable(three, tmp_path):
    three.write_text(three.read_text() + '\n[apps.xpra.environment]\nA = "1"\n')
    env = {
        "HPC_PROXIES_CONFIG": str(three),
        "HPC_PROXIES_SYSTEM": "laptop",
        "PATH": str(Path(sys.executable).parent),
    }
    done = run("status", "--json", env=env)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["files"] == [str(three)] and data["valid"] is True
    assert data["system"] == "laptop"
    apps = {app["app"]: app for app in data["apps"]}
    assert list(apps)[:2] == ["xpra", "vnc"] and {"tensorboard", "rstudio"} <= set(apps)
    xpra, vnc = apps["xpra"], apps["vnc"]
    assert vnc["missing"][:2] == ["vncserver", "vncpasswd"]
    assert xpra["executable"] is None
    assert xpra["missing"] == ["xpra", "Xvfb", "xterm"]
    assert xpra["settings"]["environment"] == {"A": "1"}
    # TensorBoard comes with the Python package (the venv), RStudio Server does not.
    assert apps["tensorboard"]["executable"] == str(Path(sys.executable).parent / "tensorboard")
    assert apps["tensorboard"]["settings"]["logdir"] == ""
    assert apps["rstudio"]["missing"] == ["rserver"]


def test_status_says_whether_paraview_can_have_its_own_network():
    done = run("status")
    assert "private network namespaces here: available" in done.stdout
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HPC_PROXIES_")}
    forbidden = subprocess.run(
        [*WITHOUT_USER_NAMESPACES, CLI, "status"],
        capture_output=True,
        text=True,
        timeout=120,
        env=full_env,
        check=False,
    )
    assert forbidden.returncode == 0, forbidden.stderr
    assert "private network namespaces here: unavailable: unshare:" in forbidden.stdout
    assert "sysctl user.max_user_namespaces" in forbidden.stdout


def test_status_fails_on_an_invalid_configuration(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[apps.vnc2]\n")
    done = run("status", env={"HPC_PROXIES_CONFIG": str(bad)})
    assert done.returncode == 1
    assert "The configuration is INVALID, so every app is disabled" in done.stdout
    assert "apps.vnc2: unknown app 'vnc2'" in done.stdout
    assert (
        "xpra: Xpra Desktop at /xpra/, DISABLED: the site configuration is invalid" in done.stdout
    )


def test_example_config_passes_check(tmp_path):
    done = run("example-config")
    assert done.returncode == 0
    assert "[apps.xpra]" in done.stdout and "# setup = " in done.stdout
    example = tmp_path / "example.toml"
    example.write_text(done.stdout)
    assert run("check", str(example)).returncode == 0
