"""The Hydra configs of iclwl (installed as the package ``iclwl.conf``, found through ``pkg://iclwl.conf``)."""
