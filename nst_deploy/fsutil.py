"""File helpers: atomic writes (a crash leaves the old file or the new one, never a partial file),
file digests, and reading torch files safely."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "check_folder", "check_writable", "load_torch", "sha256_file"]


def check_writable(path: str | os.PathLike, what: str = "") -> None:
    """Raise ``NSTError`` (one line) unless ``path`` can be written: its folder exists and is
    writable and it is not itself a folder. Called before long work, so that nothing is computed
    for an output that cannot be saved. ``what`` names the file in the message (``"log"``)."""
    from .errors import NSTError

    path = Path(path)
    label = f"{what} '{path}'" if what else f"'{path}'"
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise NSTError(f"cannot write {label}: folder '{parent}' does not exist"
                       + (" (it is a file)" if parent.exists() else ""))
    if not os.access(parent, os.W_OK):
        raise NSTError(f"cannot write {label}: folder '{parent}' is not writable")
    if path.is_dir():
        raise NSTError(f"cannot write {label}: it is a folder")


def check_folder(path: str | os.PathLike, what: str) -> None:
    """Raise ``NSTError`` (one line) unless ``path`` is a writable folder or can be made one: it is not
    a file, and its nearest existing ancestor is a writable folder. Called before long work."""
    from .errors import NSTError

    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise NSTError(f"{what} '{path}' exists and is not a folder")
    anc = path
    while not os.path.lexists(anc) and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise NSTError(f"cannot write {what} '{path}': '{anc}' is not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise NSTError(f"cannot write {what} '{path}': '{anc}' is not writable")


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (hex), read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_torch(path: str | os.PathLike, what: str):
    """``torch.load(path, weights_only=True)`` on the CPU; any failure as one ``NSTError`` line.

    ``what`` names the file in the message (``"model"``, ``"checkpoint"``).
    """
    import torch

    from .errors import NSTError

    if Path(path).is_dir():
        raise NSTError(f"{what} '{path}' is a folder, not a file")
    try:
        with warnings.catch_warnings():  # torch's advice on legacy files is not for our users
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for malformed files
        raise NSTError(f"{what} '{path}' cannot be read: {unreadable_reason(path, e)}") from None


def unreadable_reason(path: str | os.PathLike, exc: BaseException) -> str:
    """Why ``torch.load`` failed on ``path``, in a few words: an empty file, a text file or another
    file that is not a PyTorch file at all (neither a zip archive nor a pickle), else the error's
    first line."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError as e:
        return e.strerror or str(e)
    if not head:
        return "the file is empty"
    if not (head.startswith(b"PK") or head.startswith(b"\x80")):
        if b"\0" not in head:
            try:
                head.decode("utf-8")
                return "it is a text file, not a PyTorch file"
            except UnicodeDecodeError as e:
                if e.start >= len(head) - 4:  # a multi-byte character cut at the end of the block
                    return "it is a text file, not a PyTorch file"
        return "not a PyTorch file (neither a zip archive nor a pickle)"
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask is not thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync it and ``os.replace`` it onto ``path``.

    The temporary file lives in the destination folder (same file system, so the rename is
    atomic). On any exception it is removed and ``path`` is left as it was.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file 0600; give it the permissions a plain open() would (0666 & ~umask),
        # or an existing target's own permissions.
        try:
            perms = path.stat().st_mode & 0o7777
        except OSError:
            perms = 0o666 & ~_umask()
        os.chmod(tmp, perms)
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable.
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
