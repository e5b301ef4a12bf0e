"""Files written safely: whole or not at all, and only where they belong.

* :func:`atomic_file` (and :func:`atomic_write_bytes`, :func:`atomic_write_text`,
  :func:`atomic_torch_save`): a file is written under a fresh temporary name beside its target
  (created exclusively, never through a symbolic link), flushed to disk and renamed over the
  target, so a reader sees the old file or the new one, never a part of either; an error or an
  interruption leaves the old file as it was.
* :func:`name_problem` / :func:`check_name`: whether a name read from a file (a patch id, an S1
  name) may be used as one part of a path: no separator, no ``..``, no leading dot, no control
  character.  BigEarthNet names (``S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57``,
  ``S1A_IW_GRDH_1SDV_20170613T165043_33UUP_61_39``, v1's ``S2B_MSIL2A_20180502T093039_11_42``)
  pass.
* :func:`inside`: a path checked to resolve under a folder (symbolic links followed).
* :func:`check_output_folder` / :func:`clear_output`: a folder that receives an output is new,
  empty or holds an earlier output of the same kind (known by its marker file), whose entries
  are removed before it is written again (:func:`remove_paths`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import torch

from fedrs.errors import InputError

__all__ = [
    "NAME_MAX_BYTES",
    "atomic_file",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_name",
    "check_output_folder",
    "clear_output",
    "inside",
    "name_problem",
    "remove_paths",
    "sync_folder",
]

NAME_MAX_BYTES = 200
"""Longest name (UTF-8 bytes) :func:`name_problem` accepts: a file name made of it and a
suffix such as ``_B8A.tif`` stays within the 255 bytes of common file systems."""

_O_BINARY = getattr(os, "O_BINARY", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temporary(path: Path, mode: int) -> tuple[int, Path]:
    """Create ``.<name>.<random>.tmp`` beside ``path``: exclusively, not through a link."""
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | _O_BINARY | _O_NOFOLLOW
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, mode), tmp
        except FileExistsError:
            continue
    raise InputError(f"{path}: cannot create a temporary file beside it")


@contextlib.contextmanager
def atomic_file(path: str | Path, *, mode: int = 0o666) -> Iterator[IO[bytes]]:
    """A binary file handle whose content replaces ``path`` when the block ends without error.

    Args:
        path: the target; its folder must exist.
        mode: permission bits of the new file (less the umask); ``0o600`` for private keys.

    Raises:
        OSError: the folder is missing or not writable, or ``path`` is a folder.
    """
    target = Path(path)
    fd, tmp = _temporary(target, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    sync_folder(target.parent)


def atomic_write_bytes(path: str | Path, data: bytes, *, mode: int = 0o666) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_file`); returns ``path``."""
    with atomic_file(path, mode=mode) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_file`); returns ``path``."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)``, atomically (see :func:`atomic_file`); returns ``path``."""

    with atomic_file(path) as handle:
        torch.save(obj, handle)
    return Path(path)


def name_problem(name: object) -> str | None:
    """Why ``name`` may not be one part of a path, or None when it may.

    Refused: a non-string or empty name, a path separator (``/``, ``\\``), ``..``, a leading
    dot, a control or other non-printing character, more than :data:`NAME_MAX_BYTES` bytes.
    """
    if not isinstance(name, str) or not name:
        return "empty or not a string"
    if "/" in name or "\\" in name:
        return "it holds a path separator"
    if ".." in name:
        return "it holds '..'"
    if name.startswith("."):
        return "it starts with a dot"
    if any(unicodedata.category(c).startswith("C") for c in name):
        return "it holds a control character"
    if len(name.encode("utf-8", "surrogatepass")) > NAME_MAX_BYTES:
        return f"longer than {NAME_MAX_BYTES} bytes"
    return None


def check_name(name: object, what: str) -> str:
    """``name`` when it may be one part of a path (:func:`name_problem`).

    Raises:
        InputError: naming ``what`` and the problem.
    """
    problem = name_problem(name)
    if problem is not None:
        raise InputError(f"{what} {name!r} cannot name a file: {problem}")
    return str(name)


def inside(root: str | Path, path: str | Path) -> Path:
    """``path`` resolved, checked to lie under ``root`` (also resolved: links are followed).

    Raises:
        InputError: ``path`` resolves outside ``root``.
    """
    base = Path(root).resolve()
    resolved = Path(path).resolve()
    if resolved != base and not resolved.is_relative_to(base):
        raise InputError(f"{path}: resolves to {resolved}, outside {base}")
    return resolved


def check_output_folder(folder: str | Path, *, markers: Sequence[str], holds: str) -> Path:
    """Check that an output may be written to ``folder``.

    ``folder`` may be missing, empty, or hold one of the files ``markers``: an earlier output of
    the same kind, which writing replaces.

    Raises:
        InputError: ``folder`` is a file, or a non-empty folder with none of ``markers`` (the
            message says that it holds no ``holds``).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        if not any((folder / marker).exists() for marker in markers):
            raise InputError(
                f"{folder}: folder is not empty and holds no {holds}; give a new or empty folder"
            )
    return folder


def remove_paths(paths: Iterable[Path]) -> None:
    """Remove each path in turn: a folder with what it holds, a file or a link (not what it
    points to); missing ones are passed over."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def clear_output(folder: Path, entries: Sequence[str]) -> Path:
    """Remove the ``entries`` of ``folder`` in this order (:func:`remove_paths`), then make sure
    that ``folder`` exists."""
    remove_paths(folder / name for name in entries)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
