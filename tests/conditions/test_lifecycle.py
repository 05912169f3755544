"""The prompt tag's lifecycle (local backend; the central one shares the code and is run end to end elsewhere)."""

from __future__ import annotations

import pytest

from b2luca.conditions import GlobalTagState
from b2luca.conditions.backend import LocalBackend
from b2luca.conditions.lifecycle import begin_run, finish_run, missing_signoffs, publish
from b2luca.errors import GlobalTagError, PublishRefused
from b2luca.report import SignOff


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict] = []

    def __call__(self, kind, task=None, **data) -> None:
        assert kind == "global_tag" and task is None
        self.events.append(data)


def _signoff(checklist: bool = False, label: bool = False) -> SignOff:
    return SignOff(payloads_reviewed=True, checklist=checklist, label=label, url=None)


def test_lifecycle_open_testing_reopen_validated_published(tmp_path):
    backend, emit = LocalBackend(tmp_path, "prompt_x"), Recorder()
    with pytest.raises(PublishRefused, match="does not exist yet"):
        publish(backend, emit, ["A"], {})
    assert begin_run(backend, emit) is GlobalTagState.OPEN and emit.events == []
    assert finish_run(backend, emit, all_passed=False) is GlobalTagState.OPEN and emit.events == []
    with pytest.raises(PublishRefused, match="is OPEN: publishing needs TESTING"):
        publish(backend, emit, ["A"], {"A": _signoff(checklist=True)})
    assert finish_run(backend, emit, all_passed=True) is GlobalTagState.TESTING
    assert finish_run(backend, emit, all_passed=True) is GlobalTagState.TESTING  # nothing changes: no event
    assert [(e["previous"], e["state"]) for e in emit.events] == [("OPEN", "TESTING")]
    assert begin_run(backend, emit) is GlobalTagState.TESTING  # a plain rerun does not reopen

    begin_run(backend, emit, rerun=["B"])  # --rerun reopens first
    assert backend.state() is GlobalTagState.OPEN
    assert emit.events[-1]["state"] == "OPEN" and emit.events[-1]["tasks"] == ["B"]
    assert "rerun of B" in emit.events[-1]["reason"]
    finish_run(backend, emit, all_passed=True)

    signoffs = {"A": _signoff(checklist=True), "B": _signoff(), "C": _signoff(label=True)}
    with pytest.raises(PublishRefused, match=r"1 calibration\(s\) not signed off: B \(tick"):
        publish(backend, emit, ["A", "B", "C"], signoffs)
    with pytest.raises(PublishRefused, match="not signed off: D"):
        publish(backend, emit, ["A", "C", "D"], signoffs)  # no issue at all
    assert backend.state() is GlobalTagState.TESTING
    assert missing_signoffs(["A", "B", "C"], signoffs) == ["B"]

    signoffs["B"] = _signoff(checklist=True)
    n = len(emit.events)
    assert publish(backend, emit, ["A", "B", "C"], signoffs) is GlobalTagState.PUBLISHED
    assert [e["state"] for e in emit.events[n:]] == ["VALIDATED", "PUBLISHED"]
    assert emit.events[-1]["tasks"] == ["A", "B", "C"]
    assert publish(backend, emit, ["A", "B", "C"], signoffs) is GlobalTagState.PUBLISHED  # idempotent
    assert len(emit.events) == n + 2
    with pytest.raises(GlobalTagError, match="PUBLISHED: it cannot be reopened"):
        begin_run(backend, emit, rerun=["A"])
    with pytest.raises(GlobalTagError, match="PUBLISHED -> OPEN is not allowed"):
        backend.transition(GlobalTagState.OPEN)
