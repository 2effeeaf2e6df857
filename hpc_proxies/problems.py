"""Why an app cannot start or serve, as a value.

Everything that goes wrong on the way to an app (a missing program, a disabled app, a
bad site configuration, a bad URL parameter, a crash during start-up) is a
:class:`Problem`: plain text plus a code, an HTTP status and the app's last output
lines. It becomes HTML only in the page layer (:mod:`hpc_proxies.pages`) and JSON for
the control API and the ParaView kernel client (:meth:`Problem.to_json`), so no layer
parses another's markup.

Text is plain, never HTML. A span between backticks (```hpc-proxies check```) is
shown as code on a page and kept as it is in JSON and in exceptions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class ChoiceForm:
    """A form on a problem's page to choose another value of a URL parameter (the user
    has no terminal to fix a bad ``?logdir=`` with)."""

    name: str
    label: str
    value: str


@dataclass(frozen=True)
class Problem:
    """What is wrong (``summary`` follows the app's title: "ParaView is disabled here"),
    why (``details``, one paragraph each, with ``items`` as a list after the first),
    what to do (``fix``), and the app's last output lines (``tail``).

    ``code`` names the kind of problem for programs (the kernel client maps it to an
    exception); ``permanent`` problems (configuration) answer every request, the others
    are shown once and the next request tries again.
    """

    code: str
    summary: str
    details: tuple[str, ...] = ()
    items: tuple[str, ...] = ()
    fix: str = ""
    status: int = 502
    tail: tuple[str, ...] = ()
    permanent: bool = False
    form: ChoiceForm | None = None
    hint: str = ""  # a last, secondary paragraph (e.g. the same fix from the address bar)

    def with_tail(self, tail: list[str] | tuple[str, ...]) -> Problem:
        return replace(self, tail=tuple(tail))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_json` reads it back."""
        data = asdict(self)
        data["details"], data["items"], data["tail"] = (
            list(self.details),
            list(self.items),
            list(self.tail),
        )
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Problem:
        form = data.get("form")
        return cls(
            code=str(data.get("code", "unknown")),
            summary=str(data.get("summary", "")),
            details=tuple(str(d) for d in data.get("details", ())),
            items=tuple(str(i) for i in data.get("items", ())),
            fix=str(data.get("fix", "")),
            status=int(data.get("status", 502)),
            tail=tuple(str(t) for t in data.get("tail", ())),
            permanent=bool(data.get("permanent", False)),
            form=ChoiceForm(**form) if isinstance(form, Mapping) else None,
            hint=str(data.get("hint", "")),
        )

    def text(self) -> str:
        """The problem as plain text, for a log line or an exception message."""
        parts = [self.summary]
        if self.details:
            parts.append(self.details[0])
            parts += [f"- {item}" for item in self.items]
            parts += list(self.details[1:])
        if self.fix:
            parts.append(self.fix)
        return "\n".join(parts)


class CannotStart(Exception):
    """The app cannot start here for a reason the user or admin can fix (a flag the
    installed program lacks, a directory that does not exist): the launcher shows
    ``problem`` instead of starting it."""

    def __init__(self, problem: Problem):
        super().__init__(problem.summary)
        self.problem = problem
