"""Train an ensemble of small transformers on a synthetic ICL/IWL task and record ICL and IWL over training.

    python train.py                                   # the default experiment (CPU, about two minutes)
    python train.py experiment=iwl_wins               # a preset
    python train.py task=reddy2023 model=reddy2023 train.steps=20000 train.seeds=[0,1,2]
    python train.py -m task.L=4,8 sweep.p_bursty=[0.5,1.0]    # Hydra multirun outside, members inside

The same command as ``iclwl-train`` and ``python -m iclwl`` (iclwl/cli/train.py). Outputs go to the Hydra run directory
(outputs/<name>/<time>/ by default).
"""

from iclwl.cli.train import main

if __name__ == "__main__":
    main()
