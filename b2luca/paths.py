"""Paths built from names (calibrations, subsystems, global tags, groups) that must stay under their root.

Names that become path components are checked once where they enter (schema pattern, catalogue) with
:func:`check_name`; every path built from them goes through :func:`under`, which refuses any result
that would leave its root directory (``..``, an absolute part, a separator, a symlink pointing out).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import UnsafePathError

#: What a name that becomes one path component may look like: a letter, digit or ``_`` first (so never
#: ``.``, ``..`` or a hidden file), then letters, digits and ``_ . -``.  The schema's ``$defs/name`` is the same.
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$"
_NAME_RE = re.compile(NAME_PATTERN)


def check_name(name: object, what: str) -> str:
    """Return ``name`` if it is safe as one path component; else raise :class:`UnsafePathError` naming ``what``."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UnsafePathError(f"{what}: {name!r} cannot be used as a file or directory name; expected letters, "
                              f"digits and _ . - (not starting with . or -), no '/' or '..'")
    return name


def check_component(name: object, what: str) -> str:
    """Return ``name`` if it is usable as one path component; else raise :class:`UnsafePathError`.

    Looser than :func:`check_name`, for names other people choose (basf2 calibration names such as
    ``"CDC Tracking"`` hold spaces): anything printable except ``/``, ``\\``, a leading ``.`` (so never
    ``.`` or ``..``) and surrounding blanks.
    """
    if (not isinstance(name, str) or not name.strip() or name != name.strip() or name.startswith(".")
            or any(c in name for c in "/\\") or not name.isprintable()):
        raise UnsafePathError(f"{what}: {name!r} cannot be used as a file or directory name; expected printable "
                              f"characters without '/' or '\\', not starting with '.'")
    return name


def under(root: "str | os.PathLike[str]", *parts: "str | os.PathLike[str]", what: str = "path") -> Path:
    """``root / parts...``, checked to stay under ``root`` (after resolving ``..`` and symlinks).

    Raises :class:`UnsafePathError` naming ``what``, the offending parts and the root.
    """
    base = Path(root)
    path = base.joinpath(*parts)
    resolved_root = base.resolve()
    resolved = path.resolve()
    if resolved != resolved_root and resolved_root not in resolved.parents:
        shown = "/".join(str(p) for p in parts)
        raise UnsafePathError(f"{what}: {shown!r} would leave its root directory {base} (resolves to {resolved})")
    return path


__all__ = ["NAME_PATTERN", "check_component", "check_name", "under"]
