"""Before any calibration: pull the experts' settings, snapshot the run database."""

from __future__ import annotations

from pathlib import Path

from ..rundb import snapshot_for_config
from .base import BucketTask
from .context import write_json_atomic


class PullSettings(BucketTask):
    """Clone or fast-forward the bucket's settings repository; record its commit and expert overrides."""

    def output_path(self) -> Path:
        return self.ctx.settings_file

    def run(self) -> None:
        cfg = self.ctx.cfg
        if cfg.settings_repository is None:
            document = {"commit": None, "source": "bucket YAML", "expert_configs": {}}
        else:
            from ..settings_repo import pull_settings

            snapshot = pull_settings(cfg.settings_repository.url, cfg.work_dir / "settings" / "checkout",
                                     branch=cfg.settings_repository.branch)
            document = {"commit": snapshot.commit, "source": cfg.settings_repository.url,
                        "expert_configs": snapshot.expert_configs}
        write_json_atomic(self.output_path(), document)


class MakeRunDB(BucketTask):
    """Query the run database for the bucket's runs and write the CSV snapshot."""

    def output_path(self) -> Path:
        return self.ctx.cfg.rundb.snapshot

    def run(self) -> None:
        snapshot_for_config(self.ctx.cfg)
