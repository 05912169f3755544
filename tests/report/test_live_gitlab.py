"""Opt-in test against a real GitLab: set B2LUCA_GITLAB_URL, B2LUCA_GITLAB_TOKEN, B2LUCA_GITLAB_PROJECT.

It creates issues for a throw-away bucket name in that project and closes them at the end.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from b2luca.config import GitLabConfig, ReportConfig
from b2luca.report import open_reporter, read_signoffs

from .conftest import CALIBRATIONS, emit_bucket

pytestmark = pytest.mark.live
ENV = ("B2LUCA_GITLAB_URL", "B2LUCA_GITLAB_TOKEN", "B2LUCA_GITLAB_PROJECT")


@pytest.mark.skipif(not all(os.environ.get(v) for v in ENV), reason="needs " + ", ".join(ENV))
def test_live_bucket_round_trip(tmp_path: Path) -> None:
    import gitlab

    cfg = ReportConfig("gitlab", GitLabConfig(url=os.environ["B2LUCA_GITLAB_URL"],
                                                  project=os.environ["B2LUCA_GITLAB_PROJECT"],
                                                  token_env="B2LUCA_GITLAB_TOKEN", timeout=30.0))
    bucket = f"b2luca-live-{int(time.time())}"
    try:
        rep = open_reporter(cfg, tmp_path / "run1", bucket)
        emit_bucket(rep, tmp_path / "run1", fail={"BeamSpot": "calibrate"})
        assert rep.flush() == 0
        rerun = open_reporter(cfg, tmp_path / "run2", bucket)
        emit_bucket(rerun, tmp_path / "run2")
        assert rerun.flush() == 0
        so = read_signoffs(cfg, tmp_path, bucket)
        assert set(so) == set(CALIBRATIONS) and not any(s.signed_off for s in so.values())
    finally:
        gl = gitlab.Gitlab(os.environ["B2LUCA_GITLAB_URL"], private_token=os.environ["B2LUCA_GITLAB_TOKEN"])
        project = gl.projects.get(os.environ["B2LUCA_GITLAB_PROJECT"])
        issues = project.issues.list(labels=["b2luca", f"bucket::{bucket}"], get_all=True)
        for issue in issues:
            issue.state_event = "close"
            issue.save()
    assert len(issues) == len(CALIBRATIONS) + 1  # one per calibration + the summary, also after the rerun
