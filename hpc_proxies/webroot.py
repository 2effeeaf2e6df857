"""A web client's installed files, laid out to be served fast: compressed once, not at
every request.

Xpra 3.1 gzips each file again for every request (55 ms of CPU for its largest script,
several times that on a loaded node), but serves ``FILE.gzip`` instead when one lies
beside ``FILE`` (the encoding's name: its code builds ``"%s.%s" % (path, "gzip")``;
other servers look for ``FILE.gz``, so both are made). So an app can serve a
*derived* web root: the installed directories mirrored, each file a symlink to the
installed one (it stays the installed program's own: nothing is copied or patched),
with a gzip copy of it beside, and any files the app adds (e.g. its HTTP headers).

It is made once per user and per installed version, in the user's cache directory
(private, 0700), under a name derived from the installed files' identity (path, size,
modification time): an upgrade of the program gets a new tree, and the old one goes
after :data:`UNUSED_DAYS`. Concurrent launches build in temporary directories and
rename: the first to finish wins, the others use its tree.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from .runtime import UnsafeRuntimeDir, ensure_private_dir, remove_tree

#: Bump when the layout of a derived tree changes: every user's trees are made again.
FORMAT = 2
#: Where in the user's cache directory the trees live.
CACHE_SUBDIR = ("hpc-proxies", "web-roots")
#: A tree no launch has used for this long is removed (when another one is made).
UNUSED_DAYS = 30
#: A temporary tree older than this was left by a build that died.
ABANDONED_SECONDS = 3600
#: Worth a compressed copy only if it saves at least this share of the file.
MIN_SAVING = 0.1
#: Files already compressed, or the compressed copies an installation may ship.
COMPRESSED = frozenset({".gz", ".gzip", ".br", ".zip", ".png", ".jpg", ".jpeg", ".gif", ".woff2"})
#: The names of a file's gzip copy: the first is written, the others link to it.
GZIP_SUFFIXES = (".gz", ".gzip")
TMP_PREFIX = ".tmp-"


def user_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """The user's cache directory for web roots (XDG: ``$XDG_CACHE_HOME``, ``~/.cache``)."""
    env = os.environ if env is None else env
    base = Path(env.get("XDG_CACHE_HOME") or Path(env.get("HOME") or Path.home()) / ".cache")
    return base.joinpath(*CACHE_SUBDIR)


def installed_files(root: Path) -> list[tuple[str, Path]]:
    """Every file under ``root`` (symlinks followed, dangling ones left out): its path
    relative to ``root`` and its real path."""
    found = []
    for directory, _dirs, names in os.walk(root, followlinks=True):
        for name in names:
            path = Path(directory, name)
            real = Path(os.path.realpath(path))
            if real.is_file():
                found.append((path.relative_to(root).as_posix(), real))
    return sorted(found)


#: Each mirror's name and its installed files (:func:`installed_files`).
Listing = Mapping[str, list[tuple[str, Path]]]


def tree_key(listing: Listing, files: Mapping[str, str]) -> str:
    """A name for the derived tree that changes whenever an installed file does (its
    real path, size or modification time) or the added files do."""
    digest = hashlib.sha256(f"format {FORMAT}\n".encode())
    for name, installed in sorted(listing.items()):
        for relative, real in installed:
            st = real.stat()
            digest.update(f"{name}/{relative}\0{real}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for name, text in sorted(files.items()):
        digest.update(f"{name}\0{len(text)}\0{text}\n".encode())
    return digest.hexdigest()[:24]


def gzip_beside(real: Path, link: Path) -> None:
    """``link.gz``, ``real`` compressed (level 9, no timestamp: the same file always
    gives the same bytes), and ``link.gzip`` linked to it; unless that saves too little
    or the installation ships a compressed copy of its own."""
    copies = [Path(f"{link}{suffix}") for suffix in GZIP_SUFFIXES]
    if real.suffix.lower() in COMPRESSED or any(os.path.lexists(c) for c in copies):
        return
    data = real.read_bytes()
    packed = gzip.compress(data, 9, mtime=0)
    if len(packed) <= len(data) * (1 - MIN_SAVING):
        copies[0].write_bytes(packed)
        for other in copies[1:]:
            other.symlink_to(copies[0].name)


def build(
    target: Path, listing: Listing, files: Mapping[str, str], compress: Iterable[str]
) -> None:
    """Lay the tree out in ``target`` (an empty directory)."""
    compress = set(compress)
    for name, installed in listing.items():
        for relative, real in installed:
            link = target / name / relative
            link.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            link.symlink_to(real)
            if name in compress:
                gzip_beside(real, link)
    for name, text in files.items():
        path = target / name
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_text(text)


def is_complete(tree: Path, listing: Listing, files: Mapping[str, str]) -> bool:
    """Whether ``tree`` still has every file (a user may have cleaned part of the cache)."""
    if tree.is_symlink() or not tree.is_dir():
        return False
    wanted = [tree / name / rel for name, installed in listing.items() for rel, _ in installed]
    wanted += [tree / name for name in files]
    return all(os.path.lexists(path) for path in wanted)


def prune(cache: Path, keep: str) -> None:
    """Remove trees unused for :data:`UNUSED_DAYS` and temporary ones left by a build
    that died; never ``keep``, nor what another launch may be building or using."""
    now = time.time()
    for entry in cache.iterdir():
        if entry.name == keep:
            continue
        try:
            age = now - entry.lstat().st_mtime
        except FileNotFoundError:
            continue  # another launch pruned it
        building = entry.name.startswith(TMP_PREFIX)
        if age > (ABANDONED_SECONDS if building else UNUSED_DAYS * 86400):
            remove_tree(entry)


def derived_tree(
    cache: Path,
    mirrors: Mapping[str, Path],
    files: Mapping[str, str] | None = None,
    compress: Iterable[str] = (),
) -> Path:
    """The derived tree for ``mirrors`` (name -> installed directory), with ``files``
    (relative path -> text) added, and gzip copies beside the files of the mirrors
    named in ``compress``: found in ``cache`` (0700), or made there. Raises OSError
    (or UnsafeRuntimeDir) if it cannot; the caller serves the installed files then."""
    files = dict(files or {})
    cache.parent.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # ~/.cache
    ensure_private_dir(cache.parent)
    ensure_private_dir(cache)
    listing = {name: installed_files(root) for name, root in mirrors.items()}
    key = tree_key(listing, files)
    tree = cache / key
    if not is_complete(tree, listing, files):
        remove_tree(tree)
        building = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=cache))
        try:
            build(building, listing, files, compress)
            os.rename(building, tree)
        except OSError:
            remove_tree(building)
            if not is_complete(tree, listing, files):
                raise
            # Another launch renamed its tree into place first: use that one.
        prune(cache, keep=key)
    os.utime(tree)  # in use: not pruned while launches keep using it
    return tree


def link_web_root(
    link: Path,
    installed: Path,
    mirrors: Mapping[str, Path],
    files: Mapping[str, str] | None = None,
    compress: Iterable[str] = (),
) -> None:
    """Make ``link`` point at the derived tree (:func:`derived_tree`, in the user's
    cache), or at ``installed`` if it cannot be made: a slower client, never a desktop
    that does not start (a log line says why)."""
    try:
        target = derived_tree(user_cache_dir(), mirrors, files, compress)
    except (OSError, UnsafeRuntimeDir) as err:
        logging.getLogger(__name__).warning(
            "serving %s as installed (uncompressed, uncached): its web root could not be made: %s",
            installed,
            err,
        )
        target = installed
    link.symlink_to(target)
