"""URL parameters (``/tensorboard/?logdir=DIR``): what requests chose, what the app
runs with, and who may relaunch it with other values.

While the app runs its requests do not reach the supervisor, so the Jupyter server
passes a choice on through the control API (:mod:`.web`). A new value relaunches the
app only if the request cannot come from another web site (:func:`request_origin`);
otherwise the user gets a page that asks first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..origins import MAY_RELAUNCH, request_origin
from ..problems import CannotStart, ChoiceForm, Problem

__all__ = ["MAY_RELAUNCH", "Choice", "ParameterChoices", "request_origin"]
from ..spec import AppSpec, Parameter


@dataclass(frozen=True)
class Choice:
    """What a request's parameters mean: "same" (nothing changes), "switching" (the app
    is to be relaunched with them), "error" (``problem``), or "confirm" (``changes``:
    label, new value, current value or "", to ask the user about first)."""

    result: str
    problem: Problem | None = None
    changes: tuple[tuple[str, str, str], ...] = ()


class ParameterChoices:
    """The values of one app's URL parameters: chosen by requests, used by starts."""

    def __init__(
        self,
        app: AppSpec,
        settings: Mapping[str, object],
        prefix: str,
        log: Callable[[str], None],
    ) -> None:
        self.app = app
        self.settings = settings
        self.prefix = prefix
        self.log = log
        self.chosen: dict[str, str] = {}  # what requests chose (resolved)
        self.current: dict[str, str] = {}  # what the latest start used

    def problem(self, param: Parameter, value: str, message: str) -> Problem:
        """A bad value, with a form to choose another (the user has no terminal)."""
        return Problem(
            code="bad-parameter",
            summary=f"cannot open this {param.label}",
            details=(f"{message}.",),
            form=ChoiceForm(param.name, param.label, value),
            hint=f"Any {param.label} can also be opened from the address bar: "
            f"`{self.prefix}?{param.name}=…`.",
            status=404,
        )

    async def for_start(self) -> dict[str, str]:
        """This start's values: what a request chose, else the site's default; they
        become ``current``. Raises CannotStart for a bad one."""
        params = {}
        for param in self.app.parameters:
            value = self.chosen.get(param.name) or param.default(self.settings)
            try:
                params[param.name] = await asyncio.to_thread(param.resolve, value)
            except ValueError as err:
                raise CannotStart(self.problem(param, value, str(err))) from None
        self.current = params
        return params

    async def choose(self, query: Mapping[str, list[str]], origin: str, active: bool) -> Choice:
        """Apply the parameters in a request's query (``origin``: :func:`request_origin`);
        ``active``: the app is starting or running, so a change relaunches it. A new
        value from a request whose origin is not in ``MAY_RELAUNCH`` (a link on another
        site) changes nothing: such a link can neither restart the app nor choose what
        it starts with."""
        resolved = {}
        for param in self.app.parameters:
            if not query.get(param.name):
                continue
            value = query[param.name][-1]
            try:
                resolved[param.name] = await asyncio.to_thread(param.resolve, value)
            except ValueError as err:
                return Choice("error", problem=self.problem(param, value, str(err)))
        if not resolved:
            return Choice("same")
        wanted = {**self.current, **self.chosen}  # what the app runs or is about to run with
        changed = {k: v for k, v in resolved.items() if wanted.get(k) != v}
        described = ", ".join(f"{k}={v}" for k, v in changed.items())
        if changed and origin not in MAY_RELAUNCH:
            self.log(f"asking the user to confirm {described} (request: {origin})")
            labels = {param.name: param.label for param in self.app.parameters}
            changes = tuple((labels[k], v, wanted.get(k, "")) for k, v in changed.items())
            return Choice("confirm", changes=changes)
        self.chosen.update(resolved)
        if not changed or not active:
            return Choice("same")
        self.log(f"relaunching with {described} (request: {origin})")
        return Choice("switching")
