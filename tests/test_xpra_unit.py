"""The Xpra config a launch writes: the system's own, minus session commands, with the
desktop's screen size; and the screen setting's check. The web root a launch serves:
Xpra's installed client compressed once per user and version (``hpc_proxies.webroot``),
and the 304 the Jupyter side answers for an unchanged file."""

from __future__ import annotations

import gzip
import logging
import os
import stat
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace

from hpc_proxies import config, webroot, xpra
from hpc_proxies.jupyter.serverproxy import AppServerProxy, server_process
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


# ---------------------------------------------------------------- the derived web root
INSTALLED_SHARE = Path("/usr/share/xpra")


def fake_share(tmp_path: Path) -> Path:
    """A small stand-in for Xpra's share/xpra: a page, a script, an image, a header file."""
    share = tmp_path / "share" / "xpra"
    (share / "www" / "js").mkdir(parents=True)
    (share / "http-headers").mkdir()
    (share / "www" / "index.html").write_text("<html><head></head><body>" + "x" * 500)
    (share / "www" / "js" / "Client.js").write_text("var client = 1;\n" * 400)
    (share / "www" / "logo.png").write_bytes(bytes(range(256)) * 4)
    (share / "http-headers" / "00_nocache.txt").write_text("Cache-Control=no-store\n")
    return share


def tree_of(share: Path, cache: Path) -> Path:
    mirrors = {"www": share / "www", "http-headers": share / "http-headers"}
    return webroot.derived_tree(cache, mirrors, {"http-headers/99_x.txt": "A=b\n"}, ("www",))


def assert_mirrors(tree: Path, installed: Path) -> None:
    """Every installed file is in the tree as a link to itself, with a gzip copy of the
    same bytes beside the compressible ones; the tree private to the user."""
    files = webroot.installed_files(installed)
    assert files, installed
    for relative, real in files:
        link = tree / relative
        assert link.is_symlink() and link.resolve() == real, relative
        packed = Path(f"{link}.gz")
        if packed.exists():
            assert gzip.decompress(packed.read_bytes()) == real.read_bytes(), relative
            # Xpra 3.1 looks for FILE.gzip ("%s.%s" % (path, "gzip")), others for FILE.gz.
            assert Path(f"{link}.gzip").resolve() == packed.resolve(), relative
    for path in [tree, *(p for p in tree.rglob("*") if p.is_dir() and not p.is_symlink())]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


def test_the_derived_web_root_mirrors_xpras_installed_client(tmp_path):
    """On the real installation: every file of Xpra's www and http-headers reachable,
    the large scripts compressed once, the headers file added, all private."""
    assert (INSTALLED_SHARE / "www" / "index.html").is_file(), "apt install xpra"
    cache = tmp_path / "cache" / "hpc-proxies" / "web-roots"
    tree = tree_of(INSTALLED_SHARE, cache)
    assert tree.parent == cache
    assert stat.S_IMODE(cache.stat().st_mode) == stat.S_IMODE(cache.parent.stat().st_mode) == 0o700
    assert_mirrors(tree / "www", INSTALLED_SHARE / "www")
    assert_mirrors(tree / "http-headers", INSTALLED_SHARE / "http-headers")
    for script in ("js/lib/forge.js", "js/lib/jquery-ui.js", "js/Client.js", "index.html"):
        assert (tree / "www" / f"{script}.gzip").is_file(), script
    assert not (tree / "www" / "favicon.png.gz").exists(), "a PNG is compressed already"
    assert (tree / "http-headers" / "99_x.txt").read_text() == "A=b\n"
    # The next launch finds it: same tree, nothing made again.
    stamp = (tree / "www" / "js/lib/forge.js.gz").stat().st_mtime_ns
    assert tree_of(INSTALLED_SHARE, cache) == tree
    assert (tree / "www" / "js/lib/forge.js.gz").stat().st_mtime_ns == stamp


def test_a_changed_installed_file_gets_a_new_tree_and_the_old_one_goes_when_unused(tmp_path):
    share, cache = fake_share(tmp_path), tmp_path / "cache" / "roots"
    first = tree_of(share, cache)
    assert_mirrors(first / "www", share / "www")
    assert not (first / "www" / "logo.png.gz").exists()
    script = share / "www" / "js" / "Client.js"
    script.write_text("var client = 2;\n" * 400)  # an upgrade: new bytes, new time
    second = tree_of(share, cache)
    assert second != first
    assert gzip.decompress((second / "www/js/Client.js.gz").read_bytes()) == script.read_bytes()
    assert first.exists(), "a desktop started before the upgrade may still serve the old tree"
    # Unused for longer than UNUSED_DAYS: removed when the next tree is made.
    old = time.time() - (webroot.UNUSED_DAYS + 1) * 86400
    os.utime(first, (old, old))
    os.utime(script, (old, old))  # one more change
    third = tree_of(share, cache)
    assert third not in (first, second) and not first.exists() and second.exists()


def test_a_tree_missing_files_is_made_again(tmp_path):
    share, cache = fake_share(tmp_path), tmp_path / "cache" / "roots"
    tree = tree_of(share, cache)
    (tree / "www" / "js" / "Client.js.gz").unlink()
    (tree / "www" / "index.html").unlink()
    assert tree_of(share, cache) == tree
    assert_mirrors(tree / "www", share / "www")
    assert (tree / "www" / "js" / "Client.js.gz").exists()


def build_in_another_process(share: str, cache: str) -> str:
    return str(tree_of(Path(share), Path(cache)))


def test_concurrent_launches_share_one_tree_without_a_race(tmp_path):
    share, cache = fake_share(tmp_path), tmp_path / "cache" / "roots"
    with ProcessPoolExecutor(4) as pool:
        trees = set(pool.map(build_in_another_process, [str(share)] * 8, [str(cache)] * 8))
    (tree,) = trees
    assert_mirrors(Path(tree) / "www", share / "www")
    assert [p.name for p in cache.iterdir()] == [Path(tree).name], "a temporary tree was left"


def launch_in(app_dir: Path) -> SimpleNamespace:
    app_dir.mkdir(mode=0o700)
    return SimpleNamespace(app_dir=app_dir, executable="/usr/bin/xpra")


def test_a_launch_links_the_derived_root_and_xpra_serves_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    launch = launch_in(tmp_path / "app")
    xpra.link_web_root(launch)
    web = launch.app_dir / xpra.WEB_LINK
    assert web.resolve().parent == tmp_path / "cache" / "hpc-proxies" / "web-roots"
    assert xpra.html_option(launch) == f"--html={web}/www"
    # Xpra 3.1 sends the headers of WWW/../http-headers: ours come after its own.
    headers = (web / "www" / ".." / "http-headers").resolve()
    assert (headers / "00_nocache.txt").is_file()
    assert sorted(p.name for p in headers.iterdir())[-1] == Path(xpra.HEADERS_FILE).name
    assert (headers / Path(xpra.HEADERS_FILE).name).read_text() == (
        "Cache-Control=private, no-cache\n"
    )


def test_a_cache_that_cannot_be_made_falls_back_to_xpras_own_client(tmp_path, monkeypatch, caplog):
    shared = tmp_path / "cache" / "hpc-proxies"
    shared.mkdir(parents=True, mode=0o755)
    shared.chmod(0o755)  # not private: refused, never "fixed"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    launch = launch_in(tmp_path / "app")
    with caplog.at_level(logging.WARNING):
        xpra.link_web_root(launch)
    assert (launch.app_dir / xpra.WEB_LINK).resolve() == INSTALLED_SHARE
    assert xpra.html_option(launch) == f"--html={launch.app_dir / xpra.WEB_LINK}/www"
    assert "could not be made" in caplog.text and str(shared) in caplog.text
    assert not list(shared.iterdir())


def test_without_a_web_root_xpra_finds_its_own(tmp_path):
    launch = launch_in(tmp_path / "app")
    assert xpra.html_option(launch) == "--html=on"


# ---------------------------------------------------------------- revalidation, on the Jupyter side
LAST_MODIFIED = "Thu, 09 Feb 2023 23:03:10 GMT"


def xpra_file(**headers: str) -> SimpleNamespace:
    """Xpra's answer to a file request: the whole file again, whatever was asked."""
    base = {
        "Content-Type": "text/javascript",
        "Content-Encoding": "gzip",
        "Last-Modified": LAST_MODIFIED,
        "Cache-Control": "private, no-cache",
    }
    return SimpleNamespace(code=200, body=b"\x1f\x8b...", headers={**base, **headers})


def answered(request_headers: dict, response: SimpleNamespace, method: str = "GET"):
    proxy = AppServerProxy(APP, config.load(env={}, files=[]))
    proxy.answer_unchanged(SimpleNamespace(method=method, headers=request_headers), response)
    return response


def test_an_unchanged_file_is_answered_304_without_its_body():
    response = answered({"If-Modified-Since": LAST_MODIFIED}, xpra_file())
    assert (response.code, response.body) == (304, b"")
    assert "Content-Encoding" not in response.headers
    assert response.headers["Last-Modified"] == LAST_MODIFIED
    assert response.headers["Cache-Control"] == "private, no-cache"


def test_a_changed_or_unasked_file_is_sent_whole():
    for request in (
        {},
        {"If-Modified-Since": "Wed, 08 Feb 2023 23:03:10 GMT"},  # the older version
        {"If-Modified-Since": "Fri, 10 Feb 2023 23:03:10 GMT"},  # a downgrade
        {"If-None-Match": '"abc"', "If-Modified-Since": LAST_MODIFIED},  # no ETag to match
    ):
        assert answered(request, xpra_file()).code == 200, request
    assert answered({"If-Modified-Since": LAST_MODIFIED}, xpra_file(), method="POST").code == 200
    assert answered({"If-None-Match": 'W/"v1"'}, xpra_file(ETag='"v1"')).code == 304


def test_the_entry_page_with_the_password_is_never_answered_304():
    page = xpra_file(**{"Cache-Control": "no-store", "Content-Type": "text/html"})
    assert answered({"If-Modified-Since": LAST_MODIFIED}, page).code == 200


def test_the_xpra_server_dict_revalidates_after_the_secret_is_given():
    rewrites = server_process(APP, config.load(env={}, files=[]))["rewrite_response"]
    names = [rewrite.__name__ for rewrite in rewrites]
    assert names == ["give_secret_to_page", "answer_unchanged"]


# ---------------------------------------------------------------- GLX and what Xpra loads
def xvfb_line(text: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith("xvfb")]
    return line


def test_glx_stays_on_by_default_as_xpra_has_it(tmp_path):
    assert "+extension GLX" in xvfb_line(system_config_for_launch(conf_dir(tmp_path, DEBIAN_XVFB)))
    (glx,) = [s for s in config.settings_of(APP) if s.name == "glx"]
    assert glx.default is True and glx.type is bool


def test_without_glx_the_x_server_is_told_to_leave_it_out(tmp_path):
    xvfb = xvfb_line(system_config_for_launch(conf_dir(tmp_path, DEBIAN_XVFB), glx=False))
    assert "+extension GLX" not in xvfb and xvfb.endswith(" -extension GLX")
    assert "+extension Composite -screen 0 1920x1200x24+32 -dpi 96" in xvfb
    (tmp_path / "none").mkdir()
    own = xvfb_line(system_config_for_launch(conf_dir(tmp_path / "none", "mdns = no"), glx=False))
    assert "+extension GLX" not in own and own.endswith(" -extension GLX")


def test_a_continued_x_server_command_is_read_whole(tmp_path):
    xorg = (
        "xvfb = /usr/lib/xorg/Xorg -noreset -nolisten tcp \\",
        "# a comment inside",
        "       +extension GLX +extension RANDR \\",
        "       -config /etc/xpra/xorg.conf",
    )
    xvfb = xvfb_line(system_config_for_launch(conf_dir(tmp_path, *xorg, "mdns = no"), glx=False))
    assert xvfb == (
        "xvfb = /usr/lib/xorg/Xorg -noreset -nolisten tcp         +extension RANDR "
        "        -config /etc/xpra/xorg.conf -extension GLX"
    )


def test_the_glx_setting_is_checked():
    problems = config.validate({"apps": {"xpra": {"glx": "no"}}}, Path("site.toml"))
    assert problems and "apps.xpra.glx" in problems[0]
    assert config.validate({"apps": {"xpra": {"glx": False}}}, Path("site.toml")) == []


def test_xpra_loads_h264_only_and_its_gtk_no_opengl_but_the_session_may(tmp_path, monkeypatch):
    monkeypatch.delenv("GDK_GL", raising=False)
    launch = launch_in(tmp_path / "app")
    launch.settings, launch.socket, launch.secret_file = {}, tmp_path / "s", tmp_path / "p"
    argv = xpra.command(launch)
    assert {"--video-encoders=x264", "--video-decoders=none", "--opengl=noprobe"} <= set(argv)
    assert xpra.environment(launch)["GDK_GL"] == "disable"
    assert xpra.environment(launch)["MALLOC_MMAP_THRESHOLD_"] == "131072"


def test_the_session_gets_the_users_gdk_and_malloc_settings_not_xpras():
    assert xpra.session_environment({"GDK_GL": "gles", "MALLOC_ARENA_MAX": "4"}) == [
        "--start-env=GDK_GL=gles",
        "--start-env=MALLOC_ARENA_MAX=4",
        "--exec-wrapper=/usr/bin/env -u MALLOC_MMAP_THRESHOLD_ -u MALLOC_TRIM_THRESHOLD_",
    ]
    assert xpra.session_environment({n: "1" for n in xpra.XPRA_ONLY_VARIABLES}) == [
        f"--start-env={n}=1" for n in xpra.XPRA_ONLY_VARIABLES
    ]
