"""Private runtime directories and the per-launch secrets kept in them.

A login node is shared by hundreds of users and /tmp is world-writable, so every
directory we put a socket or a secret in is checked to be ours and 0700 before use,
and every secret goes into a fresh 0600 file. Secrets never travel by argv or env.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from pathlib import Path

SECRET_FILE = "secret"  # noqa: S105 (a file name, not a password)


class UnsafeRuntimeDir(RuntimeError):
    """A runtime directory exists but is not private to us: we refuse to use it."""


def ensure_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` with mode 0700, or accept an existing one only if it is safe.

    Safe means: a real directory (not a symlink), owned by us, with no group or
    other permission bits. Anything else could be another user's trap, so it is
    refused rather than "fixed".
    """
    path = Path(path)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeRuntimeDir(f"{path} exists and is not a directory")
    if st.st_uid != os.getuid():
        raise UnsafeRuntimeDir(f"{path} is owned by uid {st.st_uid}, not by us ({os.getuid()})")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise UnsafeRuntimeDir(
            f"{path} has mode {stat.S_IMODE(st.st_mode):o}; a runtime directory must be 0700"
        )
    return path


def fresh_private_dir(path: str | os.PathLike[str]) -> Path:
    """Replace whatever is at ``path`` by a new, empty 0700 directory."""
    remove_tree(path)
    return ensure_private_dir(path)


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove a directory tree (or a stray file) if it exists."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def new_secret(nbytes: int = 24) -> str:
    """A URL-safe random secret from the ``secrets`` module."""
    return secrets.token_urlsafe(nbytes)


def write_private_file(path: str | os.PathLike[str], content: str | bytes) -> Path:
    """Write ``content`` to a new 0600 file; never follow or reuse an existing path."""
    path = Path(path)
    data = content.encode() if isinstance(content, str) else content
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def write_secret(
    directory: str | os.PathLike[str], name: str = SECRET_FILE, nbytes: int = 24
) -> Path:
    """Make a new secret and store it, without a trailing newline, in ``directory/name`` (0600)."""
    return write_private_file(Path(directory) / name, new_secret(nbytes))


def read_secret(path: str | os.PathLike[str]) -> str:
    """Read a secret file written by :func:`write_secret`."""
    return Path(path).read_text().strip()


def existing_directory(value: str, base: str | os.PathLike[str] | None = None) -> Path:
    """The real path of the directory a user or admin named (``~`` expanded, relative to
    ``base`` or the working directory), or ValueError with a message for the user.

    The value may come from a URL, so it is checked before any program sees it: no
    control characters, no remote storage (``gs://``: an app would open network
    connections for it), and it must be an existing, readable directory (an app given
    a missing one would show an empty page, or fail and be restarted in a loop).
    """
    text = value.strip()
    if not text:
        raise ValueError("no directory was given")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError("the directory name contains control characters")
    if len(text) > 4096:
        raise ValueError("the directory name is too long")
    if "://" in text:
        raise ValueError(
            f"{text} is not a directory on this system; remote storage (gs://, s3://, …) "
            "is not supported here"
        )
    path = Path(os.path.expanduser(text))
    if not path.is_absolute():
        path = Path(base if base is not None else os.getcwd()) / path
    real = Path(os.path.realpath(path))
    if not real.exists():
        raise ValueError(f"{text} does not exist")
    if not real.is_dir():
        raise ValueError(f"{text} is not a directory")
    if not os.access(real, os.R_OK | os.X_OK):
        raise ValueError(f"{text} cannot be read by you")
    return real
