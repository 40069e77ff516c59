"""The config that ``python train.py <overrides>`` would run, composed without starting a Hydra app."""

from __future__ import annotations

from pathlib import Path

from iclwl.config import Config, from_dict, schema_dict

_CHECKOUT_CONF = Path(__file__).resolve().parents[2] / "conf"
# the configs: a checkout's conf/ (an editable install or a plain checkout), else the installed package iclwl.conf
IN_CHECKOUT = (_CHECKOUT_CONF / "config.yaml").is_file() and (_CHECKOUT_CONF / "experiment").is_dir()
CONFIG_PATH = str(_CHECKOUT_CONF) if IN_CHECKOUT else "pkg://iclwl.conf"


class ComposeError(Exception):
    """Hydra could not compose the overrides (an unknown key or group option, a malformed override); one line."""


def compose(overrides: list[str]) -> Config:
    """The validated Config of ``conf/`` with these Hydra overrides (``experiment=...``, ``task.L=4``, ...).
    Raises ComposeError for what Hydra refuses and ConfigError for what the schema refuses."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir, initialize_config_module
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    ConfigStore.instance().store(name="iclwl_schema", node=schema_dict())
    try:
        source = (initialize_config_dir(config_dir=CONFIG_PATH, version_base=None) if IN_CHECKOUT
                  else initialize_config_module(config_module="iclwl.conf", version_base=None))  # fmt: skip
        with source:
            raw = hydra_compose(config_name="config", overrides=overrides)
        data = OmegaConf.to_container(raw, resolve=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise ComposeError(_one_line(e)) from None
    data.pop("hydra", None)
    return from_dict(data)


def _one_line(e: Exception) -> str:
    """Hydra's message in one line: its first line, the cause's first line, a list of options joined."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = lines[0] if lines else type(e).__name__
    if len(lines) > 1 and lines[1].startswith("Available options"):
        options = [line for line in lines[2:] if not line.endswith(":") and "=" not in line]
        text += f" (available: {', '.join(options)})"
    if e.__cause__ is not None and str(e.__cause__).strip():
        text += f" ({str(e.__cause__).strip().splitlines()[0]})"
    return text
