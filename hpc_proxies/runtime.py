"""Private runtime directories and the per-launch secrets kept in them.

A login node is shared by hundreds of users and /tmp is world-writable, so every
directory we put a socket or a secret in is checked to be ours and 0700 before use,
and every secret goes into a fresh 0600 file. Secrets never travel by argv or env.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from shlex import quote

SECRET_FILE = "secret"  # noqa: S105 (a file name, not a password)
#: The stand-in home's name inside a launch's app_dir.
STAND_IN_HOME = "home"
#: coreutils' env, at the path every Linux distribution's shebangs rely on.
ENV = "/usr/bin/env"
#: The XDG base directories, and where each one is under HOME when it is not set.
XDG_BASE_DIRS = {
    "XDG_CONFIG_HOME": ".config",
    "XDG_CACHE_HOME": ".cache",
    "XDG_DATA_HOME": ".local/share",
    "XDG_STATE_HOME": ".local/state",
}


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


@dataclass(frozen=True)
class StandInHome:
    """A private directory an app's own processes get as HOME, while the session they
    start gets the user's real home back.

    Desktop servers write into HOME as they run: Xpra 3.1 its fake-Xinerama files and
    a template ``~/.config/xpra/xpra.conf``, TigerVNC's wrapper its log and pid file
    in ``~/.vnc``. On a cluster one home directory serves every node, so such files
    pile up and collide between nodes (the names carry a host or display number that
    the next session on another node reuses). The stand-in is ``app_dir/home``, so it
    goes when the app stops; ``user`` holds the values to give back to the session.
    """

    path: Path
    #: HOME, and each XDG base directory the user had set, as the user had them.
    user: dict[str, str]

    def environ(self) -> dict[str, str]:
        """For the app's own processes: HOME, and each XDG base directory the user had
        set, inside the stand-in (unset ones already follow HOME)."""
        env = {"HOME": str(self.path)}
        for name, relative in XDG_BASE_DIRS.items():
            if name in self.user:
                env[name] = str(self.path / relative)
        return env

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` run with the stand-in's :meth:`environ` (through ``env``), so that
        only the app gets it: the site's ``setup``, which runs before, and companions
        keep the user's home (a ``module load`` or ``source ~/…`` there still works)."""
        return [ENV, *(f"{name}={value}" for name, value in self.environ().items()), *argv]

    def shell_exports(self) -> str:
        """Shell lines that give a session started below the app the user's values."""
        return "".join(
            f"{name}={quote(value)}; export {name}\n" for name, value in self.user.items()
        )


def stand_in_home(
    app_dir: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> StandInHome:
    """The launch's stand-in home (made on first use; later calls find it), and the
    user's values from ``env`` (the launcher's environment by default)."""
    env = os.environ if env is None else env
    path = ensure_private_dir(Path(app_dir) / STAND_IN_HOME)
    user = {"HOME": env.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir}
    user.update({name: env[name] for name in XDG_BASE_DIRS if env.get(name)})
    return StandInHome(path, user)


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
