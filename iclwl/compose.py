"""The config that ``python train.py <overrides>`` would run, composed without starting a Hydra app."""

from __future__ import annotations

from pathlib import Path

from iclwl.config import Config, from_dict, schema_dict

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose(overrides: list[str]) -> Config:
    """The validated Config of ``conf/`` with these Hydra overrides (``experiment=...``, ``task.L=4``, ...)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="iclwl_schema", node=schema_dict())
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        raw = hydra_compose(config_name="config", overrides=overrides)
    data = OmegaConf.to_container(raw, resolve=True)
    data.pop("hydra", None)
    return from_dict(data)
