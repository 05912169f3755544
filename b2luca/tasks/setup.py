"""Before any calibration: pull the experts' settings, snapshot the run database (the work of
:class:`~b2luca.tasks.graph.PullSettings` and :class:`~b2luca.tasks.graph.MakeRunDB`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic
from ..config import BucketConfig, load_config
from ..errors import ConfigError
from ..rundb import snapshot_for_config
from ..settings_repo import pull_settings as pull_repository
from .context import BucketContext


def pull_settings(ctx: BucketContext) -> None:
    """Clone or fast-forward the bucket's settings repository; write its commit and expert overrides."""
    cfg = ctx.cfg
    if cfg.settings_repository is None:
        document: dict[str, Any] = {"commit": None, "source": "bucket YAML", "expert_configs": {}}
    else:
        snapshot = pull_repository(cfg.settings_repository.url, cfg.work_dir / "settings" / "checkout",
                                   branch=cfg.settings_repository.branch)
        expert_configs: dict[str, dict[str, Any]] = {}
        if snapshot.bucket_yaml is not None:
            expert_configs = _repo_bucket_overrides(cfg, snapshot.bucket_yaml)
        for name, overrides in snapshot.expert_configs.items():  # expert_config/<Name>.json wins
            expert_configs[name] = {**expert_configs.get(name, {}), **overrides}
        document = {"commit": snapshot.commit, "source": cfg.settings_repository.url,
                    "expert_configs": expert_configs}
    write_json_atomic(ctx.settings_file, document)


def _repo_bucket_overrides(cfg: BucketConfig, bucket_yaml: Path) -> dict[str, dict[str, Any]]:
    """The expert_config of the settings repository's bucket.yaml, which must describe this same bucket."""
    repo_cfg = load_config(bucket_yaml)
    if repo_cfg.bucket != cfg.bucket:
        raise ConfigError(f"{bucket_yaml}: bucket: describes {repo_cfg.bucket}, but {cfg.path} describes "
                          f"{cfg.bucket}; the settings repository belongs to another bucket")
    return {name: dict(values) for name, values in repo_cfg.calibrations.expert_config.items()}


def make_rundb(ctx: BucketContext) -> None:
    """Query the run database for the bucket's runs and write the CSV snapshot."""
    snapshot_for_config(ctx.cfg)
