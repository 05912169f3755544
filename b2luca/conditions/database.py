"""A local conditions database in the basf2 format, and chains of them.

A database is a directory with ``database.txt``, one line per payload IoV::

    dbstore/<PayloadName> <revision> <exp_low>,<run_low>,<exp_high>,<run_high>

(``#`` starts a comment; when several lines cover a run, the last line wins) and payload files
``dbstore_<PayloadName>_rev_<revision>.root``.  Payloads are immutable: storing new content creates a
new revision; storing the content that is already in force for the same IoV changes nothing.
Writers take an exclusive ``fcntl`` lock, so several worker processes may store into one database.
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from ..atomic import write_bytes_atomic, write_text_atomic
from ..iov import ExpRun, IoV
from .payload import PayloadError, payload_checksum, read_payload, write_payload
from ..errors import DatabaseError

DATABASE_FILE = "database.txt"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FILE_RE = re.compile(r"^dbstore_(?P<name>.+)_rev_(?P<rev>[^_]+)\.root$")


@dataclass(frozen=True)
class PayloadEntry:
    """One line of database.txt: a payload revision valid for an IoV."""

    name: str
    revision: int | str
    iov: IoV
    path: Path

    def line(self) -> str:
        """The database.txt line for this entry."""
        return f"dbstore/{self.name} {self.revision} {self.iov}"


def payload_filename(name: str, revision: int | str) -> str:
    """``dbstore_<Name>_rev_<revision>.root`` as basf2 names payload files."""
    return f"dbstore_{name}_rev_{revision}.root"


_REV_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def parse_database_lines(path: Path) -> tuple[list[tuple[int, PayloadEntry]], list[str]]:
    """Parse a database.txt leniently: ``([(line number, entry)], [problem, ...])``.

    A problem line (not UTF-8, not ``dbstore/<Name> <revision> e1,r1,e2,r2``, a name or revision that is
    not a plain identifier, e.g. ``dbstore/../../x``) is reported with its line number and skipped.
    """
    entries: list[tuple[int, PayloadEntry]] = []
    problems: list[str] = []
    directory = path.parent
    for number, data in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            raw = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(f"{path}:{number}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at column {exc.start + 1})")
            continue
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 3 or not fields[0].startswith("dbstore/"):
            problems.append(f"{path}:{number}: expected 'dbstore/<Name> <revision> e1,r1,e2,r2', got {raw[:120]!r}")
            continue
        name = fields[0][len("dbstore/"):]
        if not _NAME_RE.match(name):
            problems.append(f"{path}:{number}: payload name {name[:80]!r} must be an identifier (letters, digits, _)")
            continue
        if not _REV_RE.match(fields[1]):
            problems.append(f"{path}:{number}: revision {fields[1][:80]!r} must be a number or a plain word")
            continue
        revision: int | str = int(fields[1]) if fields[1].isdigit() else fields[1]
        try:
            iov = IoV.parse(fields[2])
        except (ValueError, TypeError) as exc:
            problems.append(f"{path}:{number}: {' '.join(str(exc).split())}")
            continue
        entries.append((number, PayloadEntry(name, revision, iov, directory / payload_filename(name, revision))))
    return entries, problems


def parse_database_txt(path: Path) -> list[PayloadEntry]:
    """Parse a database.txt; malformed lines raise one DatabaseError naming the file and every bad line."""
    entries, problems = parse_database_lines(path)
    if problems:
        raise DatabaseError("\n".join(problems) + f"\n{path}: fix or remove the line(s) above "
                            "(`b2luca status CONFIG` checks the whole conditions directory)")
    return [entry for _, entry in entries]


#: parsed database.txt files: path -> (inode, size, mtime, ctime), entries; at most _PARSED_MAX files
_PARSED: "OrderedDict[str, tuple[tuple[int, int, int, int], tuple[PayloadEntry, ...]]]" = OrderedDict()
_PARSED_MAX = 64
_PARSED_LOCK = threading.Lock()


def _parsed_entries(path: Path, version: tuple[int, int, int, int]) -> list[PayloadEntry]:
    """``parse_database_txt(path)``, reused while the file's inode, size, mtime and ctime are unchanged.

    b2luca writes database.txt atomically (a new revision is a new inode); an edit in place changes its
    mtime and ctime.  A file with bad lines is not kept: it raises again at every call."""
    key = str(path)
    with _PARSED_LOCK:
        hit = _PARSED.get(key)
        if hit is not None and hit[0] == version:
            _PARSED.move_to_end(key)
            return list(hit[1])
    entries = parse_database_txt(path)
    with _PARSED_LOCK:
        _PARSED[key] = (version, tuple(entries))
        _PARSED.move_to_end(key)
        while len(_PARSED) > _PARSED_MAX:
            _PARSED.popitem(last=False)
    return entries


class LocalDatabase:
    """A basf2-format local database directory (``database.txt`` plus payload files)."""

    def __init__(self, path: "str | os.PathLike[str]") -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"LocalDatabase({str(self.path)!r})"

    @property
    def database_txt(self) -> Path:
        return self.path / DATABASE_FILE

    def exists(self) -> bool:
        return self.database_txt.is_file()

    def create(self) -> "LocalDatabase":
        """Create the directory and an empty database.txt if missing."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.database_txt.exists():
            # an empty file needs no fsync: after a power loss it is there and empty (as written) or not there
            # (as before); every job's output database starts so (one fsync of ~2-8 ms less per calibrate job)
            write_text_atomic(self.database_txt, "", durable=False)
        return self

    # --- reading ------------------------------------------------------------------------------
    def entries(self) -> list[PayloadEntry]:
        """All lines of database.txt in file order (empty for a missing database).

        Parsed once per version of the file and process (:func:`_parsed_entries`): a production task looks
        up every constant of every run it reconstructs (issue 15)."""
        try:
            stat = os.stat(self.database_txt)
        except FileNotFoundError:
            return []
        return _parsed_entries(self.database_txt, (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns))

    def names(self) -> list[str]:
        """Payload names present, in order of first appearance."""
        return list(dict.fromkeys(entry.name for entry in self.entries()))

    def lookup(self, name: str, exprun: ExpRun) -> PayloadEntry | None:
        """The entry of ``name`` valid for ``exprun`` (the last matching line wins)."""
        for entry in reversed(self.entries()):
            if entry.name == name and entry.iov.contains(exprun):
                return entry
        return None

    def read(self, name_or_entry: "str | PayloadEntry", exprun: ExpRun | None = None) -> dict[str, np.ndarray]:
        """Read a payload given its entry, or its name and the run it must be valid for."""
        entry: "str | PayloadEntry | None" = name_or_entry
        if isinstance(name_or_entry, str):
            if exprun is None:
                raise TypeError("LocalDatabase.read(name) needs the exprun to look up")
            entry = self.lookup(name_or_entry, exprun)
            if entry is None:
                raise KeyError(f"{self.path}: no payload {name_or_entry} valid for run {exprun}")
        assert isinstance(entry, PayloadEntry)
        if not entry.path.is_file():
            raise DatabaseError(f"{self.database_txt}: payload file {entry.path.name} of {entry.line()!r} is missing")
        return read_verified(entry.path)

    # --- writing ------------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the database's exclusive write lock (between processes too)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def store(self, name: str, data: Mapping[str, "np.typing.ArrayLike"], iov: IoV) -> PayloadEntry:
        """Store ``data`` as payload ``name`` for ``iov``; return its entry.

        A no-op (returning the existing entry) when the line in force for exactly this name and IoV
        already holds the same content; otherwise a new revision is written and a line appended.
        """
        if not _NAME_RE.match(name):
            raise DatabaseError(f"payload name {name!r} must be an identifier")
        checksum = payload_checksum(data)
        with self.locked():
            entries = self.entries()
            for entry in reversed(entries):
                if entry.name == name and entry.iov == iov:
                    # a damaged revision (unreadable, checksum mismatch) is superseded by a new one
                    if check_payload_file(entry.path)[0] == checksum:
                        return entry
                    break
            revision = self._next_revision(name, entries)
            entry = PayloadEntry(name, revision, iov, self.path / payload_filename(name, revision))
            write_payload(entry.path, data)
            self._write_lines([e.line() for e in entries] + [entry.line()])
            return entry

    def store_file(self, name: str, source: Path, iov: IoV) -> PayloadEntry:
        """Store the content of an existing payload file (same rules as :meth:`store`)."""
        return self.store(name, read_payload(source), iov)

    def retire_damaged(self, names: "set[str] | Sequence[str]", reason: str) -> list[str]:
        """Comment out the lines of payloads ``names`` whose file is missing or damaged; return those lines.

        Look-ups then fall back to the earlier lines (or the next database of a chain) and a new store
        writes a new revision; the damaged file stays (its revision number stays reserved). Every other
        line, even an unparseable one, is kept byte for byte.
        """
        if not self.database_txt.exists():
            return []
        retired: list[str] = []
        with self.locked():
            out: list[bytes] = []
            for data in self.database_txt.read_bytes().splitlines():
                text = data.decode("utf-8", errors="replace").split("#", 1)[0].split()
                if len(text) == 3 and text[0].startswith("dbstore/") and text[0][8:] in names \
                        and _NAME_RE.match(text[0][8:]) and _REV_RE.match(text[1]):
                    path = self.path / payload_filename(text[0][8:], text[1])
                    if check_payload_file(path)[1] is not None:
                        retired.append(" ".join(text))
                        data = f"# {reason}: ".encode() + data
                out.append(data)
            if retired:
                write_bytes_atomic(self.database_txt, b"".join(line + b"\n" for line in out))
        return retired

    def _next_revision(self, name: str, entries: Sequence[PayloadEntry]) -> int:
        revisions = [e.revision for e in entries if e.name == name and isinstance(e.revision, int)]
        # Files without a line (a writer killed between file and line) still reserve their revision.
        for path in self.path.glob(f"dbstore_{name}_rev_*.root"):
            match = _FILE_RE.match(path.name)
            if match and match.group("name") == name and match.group("rev").isdigit():
                revisions.append(int(match.group("rev")))
        return max(revisions, default=0) + 1

    def _write_lines(self, lines: Sequence[str]) -> None:
        write_text_atomic(self.database_txt, "".join(line + "\n" for line in lines))


class DatabaseChain:
    """An ordered list of databases; a look-up returns the first database's match.

    Every look-up is recorded (:meth:`lookups`): which payload was asked for and where it was found, so
    the runner can tell which payloads a calibration read and check them against its declared
    dependencies.
    """

    def __init__(self, databases: Sequence[LocalDatabase], bucket_database: LocalDatabase | None = None) -> None:
        self.databases = list(databases)
        self.bucket_database = bucket_database  # the bucket's own results (testing payloads), if in the chain
        self._skip: frozenset[str] = frozenset()
        self._lookups: dict[tuple[str, str, str], None] = {}  # (name, database or "", revision or "")

    def without_bucket_results(self, names: "Sequence[str] | frozenset[str]") -> "DatabaseChain":
        """This chain, but ``names`` are not looked up in the bucket's own database: a calibration that
        starts from the constants it produces (the alignment) starts from those in force before the bucket,
        never from its own earlier result, so a rerun reproduces the first run.  Look-ups are recorded
        in this chain's record too."""
        view = DatabaseChain(self.databases, self.bucket_database)
        view._skip = frozenset(names)
        view._lookups = self._lookups
        return view

    def __repr__(self) -> str:
        return f"DatabaseChain({[str(db.path) for db in self.databases]})"

    def __iter__(self) -> Iterator[LocalDatabase]:
        return iter(self.databases)

    def __len__(self) -> int:
        return len(self.databases)

    def lookup(self, name: str, exprun: ExpRun) -> PayloadEntry | None:
        """The entry of the first database in the chain that has ``name`` valid for ``exprun``."""
        for database in self.databases:
            if name in self._skip and database is self.bucket_database:
                continue
            entry = database.lookup(name, exprun)
            if entry is not None:
                self._lookups[(name, str(database.path), str(entry.revision))] = None
                return entry
        self._lookups[(name, "", "")] = None
        return None

    def lookups(self) -> list[dict[str, str | None]]:
        """Every payload looked up so far, in first-look-up order: ``{"name", "database", "revision"}``
        (database and revision None when no database of the chain had it)."""
        return [{"name": name, "database": database or None, "revision": revision or None}
                for name, database, revision in self._lookups]

    def read(self, name: str, exprun: ExpRun) -> dict[str, np.ndarray]:
        """Read the payload ``name`` valid for ``exprun`` from the first database that has it."""
        entry = self.lookup(name, exprun)
        if entry is None:
            raise KeyError(f"no payload {name} valid for run {exprun} in {self!r}")
        return read_verified(entry.path)

    def read_or_none(self, name: str, exprun: ExpRun) -> dict[str, np.ndarray] | None:
        """Like :meth:`read`, but None when no database has the payload."""
        entry = self.lookup(name, exprun)
        return None if entry is None else read_verified(entry.path)


#: Payload files read and verified by this process, newest last: (path, device, inode, size, mtime, ctime) ->
#: arrays.  A payload file is never rewritten in place (a new revision is a new file, written atomically: a new
#: inode); a change by other means is seen once it changes the size or a timestamp (timestamps advance in
#: clock ticks of a few ms, so a same-size rewrite within one tick of the last read would not be).  A local run's tasks in the driver process
#: (one worker) and a production task's runs read the same few constants again and again (issue 15).
_VERIFIED: OrderedDict[tuple, dict[str, np.ndarray]] = OrderedDict()
_VERIFIED_LOCK = threading.Lock()
VERIFIED_CACHE_FILES = 64
VERIFIED_CACHE_MAX_BYTES = 16 * 2 ** 20  # per file: larger payloads (network weights) are read each time
VERIFIED_CACHE_TOTAL_BYTES = 128 * 2 ** 20  # of arrays in memory, all files together


def read_verified(path: Path) -> dict[str, np.ndarray]:
    """Read a payload file after checking its content against the checksum stored in it (one opening);
    a file this process has read and verified before, unchanged since, comes from memory (as a copy)."""
    from .verify import read_checked

    try:
        st = os.stat(path)
        key: tuple | None = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    except OSError:
        key = None  # read_checked says what is wrong
    cached = None
    if key is not None:
        with _VERIFIED_LOCK:
            cached = _VERIFIED.get(key)
            if cached is not None:
                _VERIFIED.move_to_end(key)
    if cached is not None:
        return {name: array.copy() for name, array in cached.items()}
    arrays, _, problem = read_checked(path)
    if problem or arrays is None:
        raise PayloadError(f"{path}: damaged payload: {problem}")
    size = sum(array.nbytes for array in arrays.values())
    if key is not None and key[3] <= VERIFIED_CACHE_MAX_BYTES and size <= VERIFIED_CACHE_MAX_BYTES:
        with _VERIFIED_LOCK:
            _VERIFIED[key] = {name: array.copy() for name, array in arrays.items()}
            while len(_VERIFIED) > VERIFIED_CACHE_FILES or sum(
                    a.nbytes for entry in _VERIFIED.values() for a in entry.values()) > VERIFIED_CACHE_TOTAL_BYTES:
                _VERIFIED.popitem(last=False)
    return arrays


def check_payload_file(path: Path) -> tuple[str | None, str | None]:
    """See :func:`b2luca.conditions.verify.check_payload_file`."""
    from .verify import check_payload_file as check

    return check(path)


__all__ = ["DatabaseChain", "DatabaseError", "LocalDatabase", "PayloadEntry", "PayloadError",
           "parse_database_lines", "parse_database_txt", "payload_filename", "read_verified"]
