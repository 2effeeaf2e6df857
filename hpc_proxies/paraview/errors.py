"""What ``connect()`` and ``show()`` raise: each says what is wrong and what to do."""

from __future__ import annotations


class ParaViewError(RuntimeError):
    """Base of every error ``connect()`` and ``show()`` raise."""


class ParaViewNotImportable(ParaViewError):
    """This kernel's Python cannot import ParaView."""


class ParaViewDisabled(ParaViewError):
    """The site configuration disables ParaView here."""


class PvserverStartFailed(ParaViewError):
    """pvserver did not start; ``tail`` holds its last output lines."""

    def __init__(self, message: str, tail: list[str] | None = None):
        self.tail = list(tail or [])
        detail = "\n".join(self.tail[-15:])
        super().__init__(message + (f"\nLast lines of its output:\n{detail}" if detail else ""))


class JupyterServerNotFound(ParaViewError):
    """No Jupyter server to ask for pvserver."""
