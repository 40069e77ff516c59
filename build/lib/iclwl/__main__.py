"""``python -m iclwl``: the training command (iclwl/app.py)."""

from iclwl.app import main

main()
