"""Dataset preparers: raw layouts (or the built-in synthetic generator) -> manifest and boxes.

One module per dataset (``charades``, ``cad120``, ``ssv2``, ``folder``, ``synthetic``),
imported on demand so that preparing one dataset never loads another's dependencies.
"""
