"""RStudio's command line for the flags an rserver has, and its private files."""

from __future__ import annotations

import getpass
import os
import stat

from hpc_proxies.launcher import prepare_start
from hpc_proxies.rstudio import APP, FLAGS, requires
from hpc_proxies.runtime import read_secret

ALL = frozenset(flag.name for flag in FLAGS)


def launch_for(tmp_path, flags, settings=None, executables=None):
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    return prepare_start(
        APP,
        runtime,
        runtime / "app",
        "/user/alice/rstudio/",
        settings or {},
        executables or {"rserver": "/opt/rstudio/bin/rserver"},
        flags=flags,
    )


def test_command_line_with_every_flag(tmp_path):
    launch = launch_for(
        tmp_path,
        ALL,
        settings={"r": "R-4.4"},
        executables={"rserver": "/opt/rstudio/bin/rserver", "R-4.4": "/opt/R/4.4/bin/R"},
    )
    app = launch.app_dir
    assert APP.command(launch) == [
        "/opt/rstudio/bin/rserver",
        f"--www-socket={app / 'app.sock'}",
        "--auth-none=1",
        "--www-root-path=/user/alice/rstudio/",
        f"--server-user={getpass.getuser()}",
        f"--server-data-dir={app / 'server-data'}",
        f"--database-config-file={app / 'database.conf'}",
        f"--secure-cookie-key-file={app / 'secret'}",
        "--server-daemonize=0",
        "--www-frame-origin=same",
        "--www-verify-user-agent=0",
        "--rsession-which-r=/opt/R/4.4/bin/R",
    ]
    assert APP.environment(launch) == {}


def test_secret_files_are_private_and_the_key_is_never_in_argv(tmp_path):
    launch = launch_for(tmp_path, ALL)
    app = launch.app_dir
    key = read_secret(launch.secret_file)
    assert len(key) >= 40
    assert not any(key in arg for arg in APP.command(launch))
    assert not any(key in value for value in APP.environment(launch).values())
    for path, mode in (
        (app, 0o700),
        (app / "secret", 0o600),
        (app / "database.conf", 0o600),
        (app / "server-data", 0o700),
        (app / "db", 0o700),
    ):
        assert stat.S_IMODE(os.lstat(path).st_mode) == mode, (path, oct(os.lstat(path).st_mode))
    assert (app / "database.conf").read_text() == f"provider=sqlite\ndirectory={app / 'db'}\n"
    (tmp_path / "again").mkdir()
    again = launch_for(tmp_path / "again", ALL)
    assert read_secret(again.secret_file) != key, "each start gets a new key"


def test_an_older_rserver_gets_only_the_flags_it_lists(tmp_path):
    old = frozenset({"--www-socket", "--auth-none", "--server-user", "--secure-cookie-key-file"})
    launch = launch_for(
        tmp_path, old, settings={"r": "/usr/bin/R"}, executables={"rserver": "/usr/sbin/rserver"}
    )
    argv = APP.command(launch)
    assert argv == [
        "/usr/sbin/rserver",
        f"--www-socket={launch.app_dir / 'app.sock'}",
        "--auth-none=1",
        f"--server-user={getpass.getuser()}",
        f"--secure-cookie-key-file={launch.secret_file}",
    ]
    # Without --rsession-which-r, the R goes the older way: RSTUDIO_WHICH_R.
    assert APP.environment(launch) == {"RSTUDIO_WHICH_R": "/usr/bin/R"}


def test_www_socket_and_auth_none_are_required_and_say_why():
    required = {flag.name: flag.required for flag in FLAGS if flag.required}
    assert set(required) == {"--www-socket", "--auth-none"}
    assert "never opens a TCP port" in required["--www-socket"]
    assert "authenticated by Jupyter" in required["--auth-none"]


def test_the_r_setting_is_a_requirement():
    assert [r.executable for r in requires({})] == ["rserver"]
    assert [r.executable for r in requires({"r": "/opt/R/bin/R"})] == ["rserver", "/opt/R/bin/R"]
    assert "module load RStudio-Server" in requires({})[0].install_hint
