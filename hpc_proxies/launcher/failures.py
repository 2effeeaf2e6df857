"""The supervisor's own problems, worded for the user who meets them.

Each function returns a :class:`~hpc_proxies.problems.Problem`; the page layer turns
it into HTML, the control API and the kernel client read it as JSON.
"""

from __future__ import annotations

from ..config import SiteConfig
from ..executables import MissingExecutables
from ..problems import Problem
from ..spec import Flag
from .processes import TAIL_LINES


def invalid_config(problems: list[str]) -> Problem:
    return Problem(
        code="invalid-config",
        summary="is unavailable: the site configuration is invalid",
        details=("Every hpc-proxies app is disabled until the site configuration is fixed:",),
        items=tuple(f"`{problem}`" for problem in problems),
        fix="Administrators: check the file with `hpc-proxies check`, then restart the "
        "Jupyter server.",
        status=503,
        permanent=True,
    )


def disabled(title: str, reason: str) -> Problem:
    return Problem(
        code="disabled",
        summary="is disabled here",
        details=(f"{title} is {reason}.",),
        fix="Ask your HPC centre if you need it on this system.",
        status=403,
        permanent=True,
    )


def not_installed(title: str, missing: MissingExecutables) -> Problem:
    search_path = missing.missing[0].search_path
    after_setup = f", after the site's setup snippet `{missing.setup}`" if missing.setup else ""
    return Problem(
        code="not-installed",
        summary="is not installed here",
        details=(
            f"{title} needs programs that were not found on this system:",
            f"They were looked for on `PATH={search_path}`{after_setup}.",
        ),
        items=tuple(
            f"`{m.requirement.executable}`: {m.requirement.install_hint}" for m in missing.missing
        ),
        fix="Install them, or ask your HPC centre to; the site configuration can also "
        "point the app at an `executable` in another place.",
        status=503,
        tail=tuple(missing.detail.splitlines()[-TAIL_LINES:]) if missing.detail else (),
    )


def missing_flags(asked: str, missing: list[Flag], help_text: str) -> Problem:
    return Problem(
        code="missing-flag",
        summary="cannot run with the version installed here",
        details=(
            f"`{asked}` does not list " + " or ".join(f"`{flag.name}`" for flag in missing) + ".",
            *(flag.required for flag in missing),
        ),
        fix="Administrators: install a newer version, or point the site configuration's "
        "`executable` (or `setup`) at one.",
        status=503,
        tail=tuple(help_text.strip().splitlines()[-TAIL_LINES:]),
    )


def could_not_start(program: str, error: str) -> Problem:
    return Problem(
        code="start-failed",
        summary="could not be started",
        details=(f"Starting `{program}` failed: {error}",),
    )


def start_timeout(title: str, timeout: float) -> Problem:
    return Problem(
        code="start-timeout",
        summary="did not start in time",
        details=(
            f"`{title}` did not answer on its socket within {timeout:.0f} s, so it was stopped.",
        ),
        fix="If the system is busy, the site configuration can raise the app's `timeout`.",
    )


def exited_during_start(title: str, description: str) -> Problem:
    return Problem(
        code="exited-during-start",
        summary="stopped during start-up",
        details=(f"`{title}` exited ({description}) before it was ready.",),
    )


def site_problem(site: SiteConfig, app: str, title: str) -> Problem | None:
    """An invalid site configuration or a disabled app: a page for every request."""
    if site.error is not None:
        return invalid_config(site.error.problems)
    # An app outside the registry (a site's own AppSpec) has no settings to disable it.
    if app in site.apps:
        reason = site.disabled_reason(app)
        if reason is not None:
            return disabled(title, reason)
    return None
