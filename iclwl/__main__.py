"""``python -m iclwl``: the training command (iclwl/cli/train.py)."""

from iclwl.cli.train import main

main()
