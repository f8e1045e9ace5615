"""The training loop (``loop.fit``), its callbacks, checkpoints and optimizer set-up.

Import the submodules directly (``from bmgkd_core.train.loop import fit``); this package
``__init__`` stays empty so that importing ``checkpoint`` does not pull in the data stack.
"""
