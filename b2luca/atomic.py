"""Atomic file writes: write to a temporary name beside the target, then rename it into place.

A reader (or a rerun after ``kill -9``) therefore sees either the old file or the complete new one,
never a half-written file that looks complete.  Every writer in b2luca goes through here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Iterable, Sequence

PROCESS_START = time.time()  # when b2luca was imported: temporary files older than this are not ours to wait for
# ``.<target name>.<8 characters of tempfile's random name>.tmp``, as atomic_path names them
TEMP_NAME_RE = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


def _file_mode() -> int:
    """The mode open() would give a new file under the current umask (mkstemp's 0600 would hide shared
    work dirs from colleagues)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _mkstemp_beside(path: Path) -> tuple[int, str]:
    """A new temporary file in ``path``'s directory, which is created when missing (only then: a bucket
    writes thousands of files into existing directories, and a ``mkdir`` per file cost a system call each)."""
    try:
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


@contextlib.contextmanager
def atomic_path(path: "str | os.PathLike[str]") -> Iterator[Path]:
    """Yield a temporary path in ``path``'s directory; on success it replaces ``path``, on failure it is removed."""
    path = Path(path)
    fd, tmp = _mkstemp_beside(path)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: "str | os.PathLike[str]", data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (flushed to disk before the rename).

    ``durable=False`` leaves out the fsync: still atomic (a crashed process leaves the old file or the
    new one), but after a power loss the new file may be empty.  Only for files that are rewritten before
    they are used again whenever the work that wrote them is redone (a task's intermediate inputs)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())


def write_text_atomic(path: "str | os.PathLike[str]", text: str, *, durable: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"), durable=durable)


def _json_text(document: Any, indent: int) -> str:
    return json.dumps(document, indent=indent, sort_keys=True, default=str) + "\n"


def write_json_atomic(path: "str | os.PathLike[str]", document: Any, *, indent: int = 2, durable: bool = True) -> None:
    """Write ``document`` as sorted, indented JSON atomically (non-JSON values via ``str``)."""
    write_text_atomic(path, _json_text(document, indent), durable=durable)


def write_json_atomic_many(items: "Sequence[tuple[str | os.PathLike[str], Any]]", *, indent: int = 2) -> None:
    """Write several ``(path, document)`` JSON files atomically and durably, with one disk flush for all.

    Every temporary file is written, then each is fsynced (the first fsync commits the file system's
    journal with the data of all of them, so the others cost little), then each is renamed into place in
    order: no target is replaced before every new file is on disk.  A failure before the renames leaves
    every target as it was (the temporary files are removed); one during the renames leaves the earlier
    targets new and the later ones old, each complete.  For the many small files of one step, e.g. the
    manifests and markers of a production task of hundreds of runs (one fsync each cost ~2-8 ms, issue 15).
    """
    written: list[tuple[str, Path]] = []
    renamed = 0
    try:
        for path, document in items:
            path = Path(path)
            fd, tmp = _mkstemp_beside(path)
            written.append((tmp, path))
            with os.fdopen(fd, "wb") as handle:
                handle.write(_json_text(document, indent).encode("utf-8"))
            os.chmod(tmp, _file_mode())
        for tmp, _ in written:
            descriptor = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        for done, (tmp, path) in enumerate(written):
            os.replace(tmp, path)
            renamed = done + 1
    except BaseException:
        for tmp, _ in written[renamed:]:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


def stale_temp_files(roots: Iterable["str | os.PathLike[str]"], before: float = PROCESS_START) -> list[Path]:
    """Temporary files of :func:`atomic_path`'s naming under ``roots`` last modified before ``before``.

    Such a file is left behind when a writer is killed (``kill -9``) between creating and renaming it;
    nothing ever reads it. A writer that is still alive keeps touching its file, and every temporary
    file a run creates is younger than the process, so only leftovers of earlier processes match.
    """
    found: set[Path] = set()
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                if TEMP_NAME_RE.match(name):
                    path = Path(folder) / name
                    with contextlib.suppress(OSError):
                        if path.is_file() and not path.is_symlink() and path.stat().st_mtime < before:
                            found.add(path)
    return sorted(found)


def remove_stale_temp_files(roots: Iterable["str | os.PathLike[str]"], before: float = PROCESS_START) -> list[Path]:
    """Remove :func:`stale_temp_files` (one that vanished meanwhile is skipped); return the removed paths."""
    removed = []
    for path in stale_temp_files(roots, before):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def bucket_roots(cfg: Any) -> list[Path]:
    """The folders a bucket (a ``BucketConfig``) writes into: where its stale temporary files can lie."""
    roots = [cfg.work_dir, cfg.data.raw_directory, cfg.data.cdst_directory, cfg.conditions.directory,
             cfg.archive.directory, cfg.rundb.snapshot.parent]
    return [Path(r) for r in dict.fromkeys(roots) if Path(r).is_dir()]


def clean_bucket_temp_files(cfg: Any, echo: Any = print) -> list[Path]:
    """Remove the bucket's stale temporary files (older than this process) and say so."""
    removed = remove_stale_temp_files(bucket_roots(cfg))
    if removed:
        shown = ", ".join(str(p) for p in removed[:5]) + (f" and {len(removed) - 5} more" if len(removed) > 5 else "")
        echo(f"removed {len(removed)} stale temporary file(s) left by an interrupted run (older than this "
             f"process): {shown}")
    return removed
