"""Atomic file writes: write to a temporary beside the target, give it the user's umask, then rename.

A killed process therefore leaves either the old file or the new one, never half a file. Temporaries are
named ``.NAME.<pid>.<random>.tmp`` (files or folders); the first write into a folder removes the
temporaries that dead processes left there (``kill -9`` during a write), so orphans never accumulate.
Files get ``0o666 & ~umask`` and folders ``0o777 & ~umask``, like files made with ``open()``: ``mkstemp``
and ``mkdtemp`` (and safetensors) would otherwise leave them private to their owner.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "check_output_dir",
    "check_output_file",
    "atomic_path",
    "atomic_dir",
    "temp_dir",
    "write_text",
    "write_bytes",
    "write_json",
    "write_csv",
    "read_csv",
    "save_safetensors",
    "sha256_file",
    "clean_orphans",
    "apply_umask",
]

_ORPHAN = re.compile(r"^\..+\.(\d+)\.[A-Za-z0-9_]+\.tmp$")
_cleaned: set[Path] = set()  # folders already cleaned of orphans by this process


def _umask() -> int:
    """The process's umask, read without changing it where /proc allows (thread-safe)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike[str]) -> None:
    """Give ``path`` (and, for a folder, everything inside) the permissions ``open``/``mkdir`` would."""
    mask = _umask()
    root = Path(path)
    items = [root, *root.rglob("*")] if root.is_dir() else [root]
    for item in items:
        if item.is_symlink():
            continue
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _check_creatable(target: Path, option: str) -> None:
    from tunescope.errors import InputError

    ancestor = _nearest_existing(target if not target.exists() else target.parent)
    if not ancestor.is_dir():
        raise InputError(f"{option} {target} lies under the file {ancestor}; pass a path inside a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"{option} {target}: {ancestor} is not writable; choose a folder you can write to")


def check_output_dir(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Check, before any work starts, that a folder can be created or written at ``path``.

    Raises:
        InputError: ``path`` is a file, lies under a file, or cannot be written.
    """
    from tunescope.errors import InputError

    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise InputError(f"{option} {target} is a file; pass a folder path (new, or a folder of this kind)")
    if target.is_dir():
        if not os.access(target, os.W_OK | os.X_OK):
            raise InputError(f"{option} {target} is not writable; choose a folder you can write to")
    else:
        _check_creatable(target, option)
    return target


def check_output_file(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Check, before any work starts, that a file can be written (created or replaced) at ``path``.

    Raises:
        InputError: ``path`` is a folder, lies under a file, or its folder cannot be written.
    """
    from tunescope.errors import InputError

    target = Path(path).expanduser()
    if target.is_dir():
        example = target / "reps.safetensors"
        raise InputError(f"{option} {target} is a folder; pass a file path such as {example}")
    _check_creatable(target, option)
    return target


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_orphans(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries that dead processes left in ``folder``; returns what was removed."""
    removed: list[Path] = []
    with contextlib.suppress(OSError):
        for item in Path(folder).iterdir():
            match = _ORPHAN.match(item.name)
            if match is None or _alive(int(match.group(1))):
                continue
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    item.unlink()
            removed.append(item)
    return removed


def _prepare(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = target.parent.resolve()
    if folder not in _cleaned:
        clean_orphans(folder)
        _cleaned.add(folder)


def _temp_name(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` if the block succeeds."""
    target = Path(path)
    _prepare(target)
    fd, tmp = tempfile.mkstemp(prefix=_temp_name(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        apply_umask(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` (if any) whole.

    An existing ``path`` is moved aside first and removed only once the new folder is in place.
    """
    target = Path(path)
    _prepare(target)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_name(target), suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        apply_umask(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=_temp_name(target), suffix=".tmp", dir=target.parent))
            os.rmdir(old)
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def temp_dir(parent: str | os.PathLike[str], name: str = "staging") -> Iterator[Path]:
    """A private working folder inside ``parent``, removed afterwards (and by :func:`clean_orphans` if the
    process dies): where a writer that makes several files, or its own temporaries, stages them."""
    where = Path(parent)
    _prepare(where / name)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_name(where / name), suffix=".tmp", dir=where))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _atomic_open(path: str | os.PathLike[str], newline: str | None = None) -> Iterator[IO[str]]:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline=newline) as handle:
        yield handle


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with _atomic_open(path) as handle:
        handle.write(text)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_csv(
    path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
) -> None:
    """Write a tidy table (one mapping per row) to ``path`` atomically, columns in the given order."""
    with _atomic_open(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Read a table written by :func:`write_csv` (all cells as strings)."""
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)  # full precision, round-trips exactly
    if hasattr(value, "item"):  # numpy / torch scalars
        return _cell(value.item())
    return value


def save_safetensors(
    tensors: Mapping[str, Any], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``tensors`` to a safetensors file atomically, with the same bytes for the same content.

    safetensors writes its own ``.tmpXXXXXX`` beside the file it is given, so it is given a path inside a
    temporary folder of ours (which :func:`clean_orphans` removes if the process dies). Its header lists
    the metadata in hash-map order, which varies from run to run; the header is rewritten with sorted
    metadata keys (same length, so the tensor offsets do not move).
    """
    from safetensors.torch import save_file

    target = Path(path)
    with temp_dir(target.parent, target.name) as staging:
        inner = staging / target.name
        save_file(dict(tensors), str(inner), metadata=dict(metadata) if metadata is not None else None)
        _canonical_header(inner)
        apply_umask(inner)
        os.replace(inner, target)


def _canonical_header(path: Path) -> None:
    with open(path, "r+b") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        raw = handle.read(size)
        header = json.loads(raw)
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        ordered = {"__metadata__": header.pop("__metadata__")} if "__metadata__" in header else {}
        ordered.update(sorted(header.items()))
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) > size:  # cannot happen for a reordering; keep what safetensors wrote
            return
        handle.seek(8)
        handle.write(text + b" " * (size - len(text)))


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
