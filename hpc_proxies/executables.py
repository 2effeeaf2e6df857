"""Finding the executables an app needs, with a useful answer when one is missing."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from .spec import Requirement


@dataclass(frozen=True)
class Missing:
    """One requirement that was not found, and where we looked."""

    requirement: Requirement
    search_path: str


class MissingExecutables(Exception):
    """Some executables an app needs are not installed (or not on PATH)."""

    def __init__(self, missing: list[Missing]):
        self.missing = missing
        names = ", ".join(m.requirement.executable for m in missing)
        super().__init__(f"not found: {names}")


def resolve(requirements: tuple[Requirement, ...], path: str | None = None) -> dict[str, str]:
    """Map each required executable to its full path, or raise :class:`MissingExecutables`."""
    search_path = os.environ.get("PATH", os.defpath) if path is None else path
    found: dict[str, str] = {}
    missing: list[Missing] = []
    for req in requirements:
        resolved = shutil.which(req.executable, path=search_path)
        if resolved is None:
            missing.append(Missing(req, search_path))
        else:
            found[req.executable] = resolved
    if missing:
        raise MissingExecutables(missing)
    return found
