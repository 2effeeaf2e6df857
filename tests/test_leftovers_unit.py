"""What an app or a kernel writes goes away with it: the directory reaper and the
stand-in home (unit level; the end-to-end checks are in test_paraview.py and
test_desktop_home.py)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from processes import alive, wait_gone

from hpc_proxies import vnc, xpra
from hpc_proxies.procs import DirectoryReaper
from hpc_proxies.runtime import stand_in_home
from hpc_proxies.spec import Launch
from hpc_proxies.xdisplay import desktop_script

#: A process that makes a directory with a reaper, says both, and waits to be killed.
HOLDER = """
import sys, tempfile
from hpc_proxies.procs import DirectoryReaper
directory = tempfile.mkdtemp(dir=sys.argv[1])
reaper = DirectoryReaper(directory)
print(directory, reaper.proc.pid, flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("how", ["SIGKILL", "SIGKILL to its process group", "SIGTERM"])
def test_the_reaper_removes_the_directory_however_its_holder_dies(tmp_path, how):
    """No atexit runs on SIGKILL, and a kernel manager kills the kernel's whole process
    group: the directory goes all the same, and so does the reaper."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert holder.stdout is not None
    directory, reaper = holder.stdout.readline().split()
    (Path(directory) / "Xauthority").write_bytes(b"cookie")
    assert Path(directory).is_dir() and alive({int(reaper)})
    if how.endswith("process group"):
        os.killpg(holder.pid, signal.SIGKILL)
    else:
        holder.send_signal(getattr(signal, how))
    holder.wait(10)
    assert not wait_gone({int(reaper)}, 10), "the reaper must end once it has done its job"
    assert not Path(directory).exists()


def test_remove_now_removes_at_once_and_ends_the_reaper(tmp_path):
    directory = tmp_path / "kernel-display"
    directory.mkdir()
    reaper = DirectoryReaper(directory)
    assert reaper.proc.poll() is None, "it waits while its holder lives"
    reaper.remove_now()
    assert reaper.proc.returncode == 0
    assert not directory.exists()
    reaper.remove_now()  # twice is harmless (atexit after an explicit stop)


def test_the_stand_in_home_is_private_and_gives_back_what_the_user_had(tmp_path):
    env = {"HOME": "/home/it's me", "XDG_CACHE_HOME": "/scratch/me/cache", "XDG_DATA_HOME": ""}
    home = stand_in_home(tmp_path, env)
    assert home.path == tmp_path / "home"
    assert stat.S_IMODE(home.path.stat().st_mode) == 0o700
    assert stand_in_home(tmp_path, env) == home, "a second call finds the same one"
    assert home.user == {"HOME": "/home/it's me", "XDG_CACHE_HOME": "/scratch/me/cache"}
    # Only the variables the user had set are moved; unset ones follow HOME.
    assert home.environ() == {
        "HOME": str(home.path),
        "XDG_CACHE_HOME": str(home.path / ".cache"),
    }
    exports = home.shell_exports()
    done = subprocess.run(
        ["/bin/sh", "-c", exports + 'printf "%s|%s" "$HOME" "$XDG_CACHE_HOME"'],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == "/home/it's me|/scratch/me/cache"


def launch(tmp_path: Path, executables: dict[str, str], **settings: object) -> Launch:
    app_dir = tmp_path / "app"
    app_dir.mkdir(mode=0o700)
    (app_dir / "secret").write_text("s3cret")
    return Launch(
        name="desktop",
        runtime_dir=tmp_path,
        app_dir=app_dir,
        socket=app_dir / "app.sock",
        secret_file=app_dir / "secret",
        executables=executables,
        prefix="/desktop/",
        settings=settings,
    )


def test_xpra_runs_in_the_stand_in_and_its_session_gets_the_real_home(tmp_path, monkeypatch):
    home = tmp_path / "alice"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XPRA_USER_CONF_DIRS", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("XPRA_SYSTEM_CONF_DIRS", str(tmp_path / "no-system-conf"))
    start = launch(tmp_path, {"xpra": "/usr/bin/xpra"})
    xpra.prepare(start)
    env = xpra.environment(start)
    argv = xpra.command(start)
    # Only Xpra gets the stand-in: the site's setup, run before it, keeps the real home.
    assert argv[:3] == ["/usr/bin/env", f"HOME={start.app_dir / 'home'}", "/usr/bin/xpra"]
    assert "HOME" not in env
    assert f"--start-env=HOME={home}" in argv
    # No configuration of the user's own: Xpra's template goes into the stand-in
    # (its OpenGL probe runs with the real HOME, so the variable is always set).
    assert env["XPRA_USER_CONF_DIRS"] == str(start.app_dir / "home" / ".config" / "xpra")
    # With one, Xpra reads it (and so writes no template anywhere).
    (home / ".xpra").mkdir(parents=True)
    (home / ".xpra" / "xpra.conf").write_text("speaker=off\n")
    if os.getuid() > 0:
        assert xpra.environment(start)["XPRA_USER_CONF_DIRS"] == str(home / ".xpra")
    assert xpra.user_config_dir({"HOME": str(home)}, uid=1000) == home / ".xpra"
    assert xpra.user_config_dir({"HOME": str(home)}, uid=0) is None, "Xpra's rule for root"


def test_vncserver_runs_in_the_stand_in_and_xstartup_gives_the_real_home_back(
    tmp_path, monkeypatch
):
    """TurboVNC's wrapper runs with the stand-in home; TigerVNC's X server runs without
    its wrapper (which wrote ~/.vnc) and keeps the real home, like the session."""
    monkeypatch.setenv("HOME", "/home/alice")
    monkeypatch.setenv("XDG_CONFIG_HOME", "/home/alice/.my-config")
    turbo = tmp_path / "turbovnc" / "vncserver"
    turbo.parent.mkdir()
    turbo.write_text("#!/usr/bin/env perl\n# TurboVNC vncserver script\n")
    start = launch(tmp_path, {"vncserver": str(turbo), "vncpasswd": "/usr/bin/vncpasswd"})
    vnc.prepare(start)
    assert vnc.command(start)[:4] == [
        "/usr/bin/env",
        f"HOME={start.app_dir / 'home'}",
        f"XDG_CONFIG_HOME={start.app_dir / 'home' / '.config'}",
        str(turbo),
    ]
    (tmp_path / "tiger").mkdir()
    tiger = launch(tmp_path / "tiger", {"vncserver": "/usr/bin/vncserver", "vncpasswd": "x"})
    assert vnc.command(tiger)[:2] == ["/bin/sh", str(desktop_script())]
    assert "/usr/bin/Xtigervnc" in vnc.command(tiger)
    assert vnc.APP.environment(start) == {}, "the setup keeps the real home"
    xstartup = (start.app_dir / "xstartup").read_text()
    exports = "HOME=/home/alice; export HOME\nXDG_CONFIG_HOME=/home/alice/.my-config; export"
    assert exports in xstartup
    assert xstartup.index(exports) < xstartup.index(vnc.DEFAULT_SESSION)
