"""The prompt global tag's lifecycle, driven by b2luca (DESIGN §9, issue 12).

- :func:`begin_run`: the tag is created OPEN; a ``--rerun`` reopens a TESTING/VALIDATED tag (→ OPEN) first,
  and refuses (before anything is invalidated) for a PUBLISHED or INVALID tag.
- :func:`finish_run`: when every calibration of the bucket passed, OPEN → TESTING.
- :func:`publish`: every calibration signed off → TESTING → VALIDATED → PUBLISHED; otherwise it refuses
  and names what is missing.

Each state change is reported through ``emit("global_tag", None, ...)`` (a note on the summary issue and
on the issues named in ``tasks``); nothing is emitted when nothing changes.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

from ..errors import GlobalTagError, PublishRefused
from .backend import ConditionsBackend
from .globaltag import GlobalTagState

Emit = Callable[..., None]
REOPENABLE = (GlobalTagState.TESTING, GlobalTagState.VALIDATED)


def _change(backend: ConditionsBackend, emit: Emit, target: GlobalTagState, reason: str,
            tasks: Sequence[str] = ()) -> None:
    current = backend.state()
    backend.transition(target)
    emit("global_tag", None, tag=backend.tag, backend=backend.kind, previous=current.value if current else None,
         state=target.value, reason=reason, tasks=list(tasks))


def begin_run(backend: ConditionsBackend, emit: Emit, rerun: Sequence[str] = ()) -> GlobalTagState:
    """Create the tag OPEN if missing; reopen it for ``rerun`` calibrations; return the state now."""
    state = backend.ensure()
    if not rerun:
        return state
    if state in REOPENABLE:
        _change(backend, emit, GlobalTagState.OPEN, f"reopened for the rerun of {', '.join(rerun)}", rerun)
        return GlobalTagState.OPEN
    if state is not GlobalTagState.OPEN:
        raise GlobalTagError(f"global tag {backend.tag} is {state.value}: it cannot be reopened, so "
                             f"--rerun {' '.join(rerun)} cannot store new payloads (use a new prompt global tag)")
    return state


def finish_run(backend: ConditionsBackend, emit: Emit, all_passed: bool) -> GlobalTagState | None:
    """OPEN → TESTING when ``all_passed`` (every calibration of the bucket succeeded); the state now."""
    state = backend.state()
    if all_passed and state is GlobalTagState.OPEN:
        _change(backend, emit, GlobalTagState.TESTING,
                "every calibration passed: ready for the experts' sign-off (b2luca publish after it)")
        return GlobalTagState.TESTING
    return state


def missing_signoffs(calibrations: Iterable[str], signoffs: Mapping[str, Any]) -> list[str]:
    """Calibrations without an issue or whose issue is not signed off."""
    return [name for name in calibrations
            if name not in signoffs or not getattr(signoffs[name], "signed_off", signoffs[name] is True)]


def publish(backend: ConditionsBackend, emit: Emit, calibrations: Sequence[str],
            signoffs: Mapping[str, Any]) -> GlobalTagState:
    """TESTING → VALIDATED → PUBLISHED once every calibration is signed off (resumes from VALIDATED)."""
    state = backend.state()
    if state is None:
        raise PublishRefused(f"global tag {backend.tag} does not exist yet: run the bucket first")
    if state is GlobalTagState.PUBLISHED:
        return state
    if state not in REOPENABLE:
        raise PublishRefused(f"global tag {backend.tag} is {state.value}: publishing needs TESTING, which it reaches "
                             "when every calibration of the bucket passed")
    missing = missing_signoffs(calibrations, signoffs)
    if missing:
        raise PublishRefused(f"global tag {backend.tag} not published: {len(missing)} calibration(s) not signed off: "
                             f"{', '.join(missing)} (tick 'sign-off' in the issue or add the label 'signed-off')")
    if state is GlobalTagState.TESTING:
        _change(backend, emit, GlobalTagState.VALIDATED, "every calibration signed off")
    _change(backend, emit, GlobalTagState.PUBLISHED, "published: the constants may be used", calibrations)
    return GlobalTagState.PUBLISHED


__all__ = ["begin_run", "finish_run", "missing_signoffs", "publish"]
