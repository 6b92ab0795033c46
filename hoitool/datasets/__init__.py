"""Dataset preparers: raw layouts (or the built-in synthetic generator) -> manifest and boxes.

One module per dataset (``charades``, ``cad120``, ``ssv2``, ``folder``, ``synthetic``), each registering
its preparer in :mod:`hoitool.datasets.registry`; what they share (the prepared folder's files, the
helpers, and the prepare-once policy :func:`~hoitool.datasets.common.prepare_dataset`) is in
:mod:`hoitool.datasets.common`. A dataset module imports heavy dependencies (video encoders) only
inside the functions that need them, since the registry imports every module to list them.
"""
