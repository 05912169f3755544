"""Before any calibration: pull the experts' settings, snapshot the run database."""

from __future__ import annotations

from pathlib import Path

from ..rundb import snapshot_for_config
from .base import BucketTask
from ..atomic import write_json_atomic


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
            expert_configs: dict = {}
            if snapshot.bucket_yaml is not None:
                expert_configs = _repo_bucket_overrides(cfg, snapshot.bucket_yaml)
            for name, overrides in snapshot.expert_configs.items():  # expert_config/<Name>.json wins
                expert_configs[name] = {**expert_configs.get(name, {}), **overrides}
            document = {"commit": snapshot.commit, "source": cfg.settings_repository.url,
                        "expert_configs": expert_configs}
        write_json_atomic(self.output_path(), document)


def _repo_bucket_overrides(cfg, bucket_yaml: Path) -> dict:
    """The expert_config of the settings repository's bucket.yaml, which must describe this same bucket."""
    from ..config import ConfigError, load_config

    repo_cfg = load_config(bucket_yaml)
    if repo_cfg.bucket != cfg.bucket:
        raise ConfigError(f"{bucket_yaml}: bucket: describes {repo_cfg.bucket}, but {cfg.path} describes "
                          f"{cfg.bucket}; the settings repository belongs to another bucket")
    return {name: dict(values) for name, values in repo_cfg.calibrations.expert_config.items()}


class MakeRunDB(BucketTask):
    """Query the run database for the bucket's runs and write the CSV snapshot."""

    def output_path(self) -> Path:
        return self.ctx.cfg.rundb.snapshot

    def run(self) -> None:
        snapshot_for_config(self.ctx.cfg)
