"""Running a Jupyter server as an ordinary user of this machine rather than as root, who
bypasses file permissions: what a 0700 directory or a socket in it proves holds only
for a server run by a user the permissions apply to."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import JupyterServer, jupyter_with_site, python_for_anyone
from processes import LocalUser


@contextmanager
def anyone_python(scripts: tuple[str, ...] = ("tensorboard",)) -> Iterator[str]:
    """``python_for_anyone`` in a temporary directory every user can enter, with the
    console ``scripts`` pip would have put beside it (the TensorBoard app looks for
    ``tensorboard`` there, and the test venv's own one names a Python only root can
    run); removed after."""
    directory = Path(tempfile.mkdtemp(prefix="hpcp-python-"))
    directory.chmod(0o755)
    try:
        yield python_for_anyone(directory, scripts)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def users_jupyter(
    user: LocalUser,
    python: str,
    toml: str | None = None,
    dirs: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Iterator[JupyterServer]:
    """``user``'s Jupyter server (site configuration ``toml``), with HOME and its root
    directory in a base directory only ``user`` can enter, and ``dirs`` (names) made
    there too; ``server.extra["base"]`` is that directory; ``env`` is added to its
    environment. Stopped, and the base removed, after."""
    base = Path(tempfile.mkdtemp(prefix=f"{user.name}-"))
    try:
        for path in (base, base / "home", base / "root", *(base / name for name in dirs)):
            path.mkdir(mode=0o700, exist_ok=True)
            os.chown(path, user.uid, user.gid)
        env = {**(env or {}), "HOME": str(base / "home")}
        with jupyter_with_site(base, toml, env, user=user, python=python) as server:
            server.extra["base"] = base
            yield server
    finally:
        shutil.rmtree(base)
