"""The training command: Hydra composes the configs, ``iclwl.run`` trains.

    iclwl-train                                       # the default experiment (CPU, about two minutes)
    iclwl-train experiment=iwl_wins                   # a preset
    iclwl-train task=reddy2023 model=reddy2023 train.steps=20000 train.seeds=[0,1,2]
    iclwl-train -m task.L=4,8 'sweep.p_bursty=[0.5,1.0]'   # Hydra multirun outside, members inside
    iclwl-train --config-dir my_configs experiment=mine   # configs of your own beside the packaged ones

``python -m iclwl`` and ``python train.py`` (in a checkout) are the same command. Outputs go to the Hydra run
directory (``outputs/<name>/<time>/`` under the current directory by default). The configs are the checkout's
``conf/`` when there is one, else the installed package ``iclwl.conf``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from data_gen import ConfigError
from iclwl.cli.compose import CONFIG_PATH
from iclwl.config import from_dict, schema_dict
from iclwl.record.checkpoints import CheckpointError
from iclwl.record.rundir import RunDirError, RunIOError
from iclwl.run import NonFiniteLoss, run
from iclwl.training.preemption import Preempted

ConfigStore.instance().store(name="iclwl_schema", node=schema_dict())


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def train(raw: DictConfig) -> None:
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # no "no TPU here" notes at INFO
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax narrates every save at INFO
    try:
        cfg = from_dict(OmegaConf.to_container(raw, resolve=True))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    except RunDirError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (CheckpointError, NonFiniteLoss) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    except RunIOError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(4)
    except Preempted as e:
        print(str(e), file=sys.stderr)
        sys.exit(e.exit_code)


def check_run_dir(argv: list[str]) -> None:
    """Hydra makes its run directory before ``main`` runs: refuse an unusable one in one line, not a traceback."""
    given = [a.split("=", 1)[1] for a in argv if a.startswith(("hydra.run.dir=", "hydra.sweep.dir=")) and "${" not in a]
    for d in given or ["."]:
        try:
            Path(d).mkdir(parents=True, exist_ok=True)
            writable = os.access(d, os.W_OK)
        except OSError as e:
            writable, why = False, e.strerror
        else:
            why = "permission denied"
        if not writable:
            print(f"config error: output dir = {d}: must be a writable directory ({why})", file=sys.stderr)
            sys.exit(2)


def check_overrides(argv: list[str]) -> None:
    """Compose a plain run's config the way Hydra will, so that an unknown key, group option or a malformed
    override is one line and exit code 2 rather than Hydra's report (multirun and Hydra's flags are left to it)."""
    if any(a.startswith("-") for a in argv):
        return
    from iclwl.cli.compose import ComposeError, compose

    try:
        compose(argv)
    except ComposeError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    except ConfigError:
        return  # main reports it, in the same words


def main() -> None:
    """The command line: ``iclwl-train``, ``python -m iclwl`` and ``python train.py`` all land here."""
    check_run_dir(sys.argv[1:])
    check_overrides(sys.argv[1:])
    train()


if __name__ == "__main__":
    main()
