"""The Xpra config a launch writes: the system's own, minus session commands, with the
desktop's screen size; and the screen setting's check."""

from __future__ import annotations

from pathlib import Path

from hpc_proxies import config
from hpc_proxies.xpra import APP, system_config_for_launch

DEBIAN_XVFB = (
    "xvfb = Xvfb +extension GLX +extension Composite -screen 0 5760x2560x24+32 -dpi 96 "
    "-nolisten tcp -noreset -auth $XAUTHORITY"
)


def conf_dir(tmp_path: Path, *lines: str) -> Path:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "55_server_x11.conf").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_the_screen_size_replaces_xpras_keeping_depth_and_options(tmp_path):
    text = system_config_for_launch(conf_dir(tmp_path, DEBIAN_XVFB, "sync-xvfb = 0"), "2560x1600")
    assert "-screen 0 2560x1600x24+32 -dpi 96 -nolisten tcp -noreset" in text
    assert "5760x2560" not in text and "sync-xvfb = 0" in text


def test_session_commands_of_the_system_config_are_dropped(tmp_path):
    text = system_config_for_launch(
        conf_dir(tmp_path, DEBIAN_XVFB, "start=/etc/X11/Xsession true", "start-child = x")
    )
    assert "Xsession" not in text and "start-child" not in text
    assert "-screen 0 1920x1200x24+32" in text


def test_without_an_xvfb_line_the_launch_names_its_own_with_the_screen(tmp_path):
    text = system_config_for_launch(conf_dir(tmp_path, "mdns = no"), "1280x800")
    (xvfb,) = [line for line in text.splitlines() if line.startswith("xvfb")]
    assert "-screen 0 1280x800x24+32" in xvfb and "-nolisten tcp" in xvfb


def test_an_x_server_without_a_screen_option_is_left_as_it_is(tmp_path):
    xorg = "xvfb = Xorg -noreset -nolisten tcp -config /etc/xpra/xorg.conf"
    assert xorg in system_config_for_launch(conf_dir(tmp_path, xorg), "2560x1600")


def test_the_screen_setting_is_checked():
    def problems(screen: str) -> list[str]:
        return config.validate({"apps": {"xpra": {"screen": screen}}}, Path("site.toml"))

    assert problems("2560x1600") == []
    assert problems("big") == [
        "site.toml: apps.xpra.screen: expected a string of the form WIDTHxHEIGHT, "
        "e.g. '2560x1600', got 'big'"
    ]
    (screen,) = [s for s in config.settings_of(APP) if s.name == "screen"]
    assert screen.default == "1920x1200"
