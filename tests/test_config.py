"""Unit tests of the site configuration: every validation message, selection and merging."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hpc_proxies import config


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    site = config.load(env={}, hostname="node1", files=[write(tmp_path, text)])
    assert site.error is not None, "expected the configuration to be rejected"
    assert all(not s.enabled for s in site.apps.values()), "a broken file must disable all"
    return site.error.problems


def one_problem(tmp_path: Path, text: str) -> str:
    (problem,) = problems(tmp_path, text)
    assert problem.startswith(str(tmp_path / "config.toml") + ": ")
    return problem


def test_syntax_error_names_file_and_line(tmp_path):
    problem = one_problem(tmp_path, '[apps.xpra]\ntimeout = 10\nsetup = "unterminated\n')
    assert ": line 3: TOML syntax error" in problem


def test_unknown_table(tmp_path):
    assert "appz: unknown table (did you mean 'apps'?)" in one_problem(tmp_path, "[appz.xpra]\n")


def test_unknown_app_name(tmp_path):
    problem = one_problem(tmp_path, "[apps.xpar]\nenabled = false\n")
    assert "apps.xpar: unknown app 'xpar' (did you mean 'xpra'?)" in problem


def test_unknown_key_with_suggestion(tmp_path):
    problem = one_problem(tmp_path, "[apps.xpra]\ntimout = 10\n")
    assert "apps.xpra.timout: unknown key (did you mean 'timeout'?)" in problem


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('timeout = "fast"', "apps.xpra.timeout: expected a number, got 'fast'"),
        ("timeout = -3", "apps.xpra.timeout: expected a number, got -3"),
        ('enabled = "yes"', "apps.xpra.enabled: expected true or false, got 'yes'"),
        ("title = 3", "apps.xpra.title: expected a string, got 3"),
        ("environment = { A = 1 }", "apps.xpra.environment: expected a table of strings"),
        ('mode = "full"', "apps.xpra.mode: expected one of 'seamless', 'desktop', got 'full'"),
    ],
)
def test_wrong_types(tmp_path, line, expected):
    assert expected in one_problem(tmp_path, f"[apps.xpra]\n{line}\n")


@pytest.mark.parametrize("match", ['"jr*"', "[]", '[""]', "[1]"])
def test_bad_match(tmp_path, match):
    problem = one_problem(tmp_path, f"[systems.jr]\nmatch = {match}\n")
    assert "systems.jr.match: expected a non-empty list of hostname globs" in problem


def test_unknown_key_in_a_system_and_its_apps(tmp_path):
    found = problems(
        tmp_path,
        '[systems.jr]\nmatsh = ["a*"]\n[systems.jr.apps.xpra]\nenabeld = false\n',
    )
    assert any("systems.jr.matsh: unknown key (did you mean 'match'?)" in p for p in found)
    assert any(
        "systems.jr.apps.xpra.enabeld: unknown key (did you mean 'enabled'?)" in p for p in found
    )


SYSTEMS = """
[apps.xpra]
timeout = 30
environment = { A = "apps", B = "apps" }

[systems.login]
match = ["jrlogin*", "jrc*"]
[systems.login.apps.xpra]
setup = "module load xpra/5.0"
environment = { B = "login" }

[systems.gpu]
match = ["jrc0*", "gpu*"]
[systems.gpu.apps.xpra]
enabled = false
"""


def test_system_by_hostname_glob_first_match_wins(tmp_path):
    path = write(tmp_path, SYSTEMS)
    site = config.load(env={}, hostname="jrc0123.example.org", files=[path])
    assert site.error is None
    assert site.system == "login"  # both match; login comes first
    assert "'jrc0123' matches 'jrc*' of systems.login" in site.system_reason
    xpra = site.for_app("xpra")
    assert xpra.enabled
    assert xpra["setup"] == "module load xpra/5.0"
    assert xpra["timeout"] == 30
    assert xpra["environment"] == {"A": "apps", "B": "login"}
    assert xpra.sources["setup"] == f"{path}: systems.login.apps.xpra.setup"
    assert xpra.sources["timeout"] == f"{path}: apps.xpra.timeout"
    assert xpra.sources["mode"] == "default"


def test_system_by_variable(tmp_path):
    path = write(tmp_path, SYSTEMS)
    site = config.load(env={"HPC_PROXIES_SYSTEM": "gpu"}, hostname="jrlogin01", files=[path])
    assert site.system == "gpu" and site.system_reason == "HPC_PROXIES_SYSTEM=gpu"
    assert not site.for_app("xpra").enabled
    assert site.disabled_reason("xpra") == (
        "disabled on system 'gpu' by the site configuration "
        f"({path}: systems.gpu.apps.xpra.enabled)"
    )


def test_unknown_system_variable_is_an_error(tmp_path):
    site = config.load(
        env={"HPC_PROXIES_SYSTEM": "nope"}, hostname="x", files=[write(tmp_path, SYSTEMS)]
    )
    assert site.error is not None
    assert "HPC_PROXIES_SYSTEM=nope names no [systems.nope] table (systems: login, gpu)" in str(
        site.error
    )


def test_no_matching_system_uses_the_defaults(tmp_path):
    site = config.load(env={}, hostname="laptop", files=[write(tmp_path, SYSTEMS)])
    assert site.system is None and "no system matches host name 'laptop'" in site.system_reason
    assert site.for_app("xpra")["setup"] == ""
    assert site.for_app("xpra")["timeout"] == 30


def test_later_files_override_earlier_ones_key_by_key(tmp_path):
    stack = write(tmp_path, '[apps.xpra]\ntimeout = 30\ntitle = "Stack"\n', "stack.toml")
    node = write(tmp_path, "[apps.xpra]\ntimeout = 90\n", "node.toml")
    site = config.load(env={}, hostname="x", files=[stack, node])
    xpra = site.for_app("xpra")
    assert (xpra["timeout"], xpra["title"]) == (90, "Stack")
    assert xpra.sources["timeout"] == f"{node}: apps.xpra.timeout"
    assert xpra.sources["title"] == f"{stack}: apps.xpra.title"


def test_default_files_are_the_stack_then_the_node():
    stack, node = config.default_config_files()
    assert stack.parts[-3:] == ("etc", "hpc-proxies", "config.toml")
    assert node == Path("/etc/hpc-proxies/config.toml")


def test_the_variable_names_the_only_file(tmp_path):
    path = write(tmp_path, "[apps.xpra]\nenabled = false\n")
    site = config.load(env={"HPC_PROXIES_CONFIG": str(path)}, hostname="x")
    assert site.files == [path]
    assert not site.for_app("xpra").enabled
    missing = config.load(env={"HPC_PROXIES_CONFIG": str(tmp_path / "gone.toml")}, hostname="x")
    assert missing.error is not None and "cannot be read" in str(missing.error)


def test_without_any_file_everything_is_on_with_defaults():
    site = config.load(env={}, hostname="x", files=[])
    assert site.error is None and site.for_app("xpra").enabled
    assert site.for_app("xpra")["timeout"] == 60.0


def test_example_config_is_valid_and_covers_every_key(tmp_path):
    example = config.example_config()
    assert config.load(env={}, hostname="exlogin1", files=[write(tmp_path, example)]).error is None
    # Uncommenting every "# key = value" line of the app tables must stay valid.
    uncommented = re.sub(r"^# (\w+ = .*)$", r"\1", example, flags=re.M)
    uncommented = re.sub(r"^# (\[systems\..*\])$", r"\1", uncommented, flags=re.M)
    site = config.load(env={}, hostname="exgpu1", files=[write(tmp_path, uncommented, "all.toml")])
    assert site.error is None, site.error
    for setting in config.settings_of(config.load_app("xpra")):
        assert f"# {setting.name} = " in example, setting.name
    assert site.system == "example-gpu" and not site.for_app("xpra").enabled


DEFAULTS = """
[defaults]
idle_timeout = 120
max_instances = 4

[apps.tensorboard]
idle_timeout = 30

[systems.login]
match = ["login*"]
[systems.login.defaults]
idle_timeout = 60
[systems.login.apps.paraview]
max_instances = 1
"""


def test_defaults_apply_to_every_app_and_an_apps_own_key_wins(tmp_path):
    path = write(tmp_path, DEFAULTS)
    elsewhere = config.load(env={}, hostname="compute1", files=[path])
    assert elsewhere.error is None
    assert elsewhere.for_app("xpra")["idle_timeout"] == 120
    assert elsewhere.for_app("xpra").sources["idle_timeout"] == f"{path}: defaults.idle_timeout"
    assert elsewhere.for_app("tensorboard")["idle_timeout"] == 30
    assert elsewhere.for_app("paraview")["max_instances"] == 4

    login = config.load(env={}, hostname="login1", files=[path])
    assert login.for_app("xpra")["idle_timeout"] == 60, "the system's defaults beat the site's"
    assert login.for_app("tensorboard")["idle_timeout"] == 30, "an app's own key beats defaults"
    assert login.for_app("paraview")["max_instances"] == 1
    assert login.for_app("paraview").sources["max_instances"] == (
        f"{path}: systems.login.apps.paraview.max_instances"
    )


def test_without_a_file_idle_shutdown_is_off_and_instances_have_app_defaults():
    site = config.load(env={}, hostname="x", files=[])
    assert all(site.for_app(app)["idle_timeout"] is None for app in site.apps)
    limits = {app: site.for_app(app)["max_instances"] for app in site.apps}
    assert limits == {"xpra": 3, "vnc": 3, "tensorboard": 3, "rstudio": 1, "paraview": 1}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[defaults]\nmode = 'desktop'\n", "defaults.mode: unknown key; [defaults] takes only"),
        ("[defaults]\nidle_timout = 5\n", "defaults.idle_timout: unknown key (did you mean"),
        ("[apps.xpra]\nmax_instances = 0\n", "expected a whole number of at least 1, got 0"),
        ("[defaults]\nidle_timeout = -1\n", "defaults.idle_timeout: expected a number, got -1"),
    ],
)
def test_bad_defaults_and_limits_are_refused(tmp_path, text, expected):
    assert expected in one_problem(tmp_path, text)
