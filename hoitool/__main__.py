"""``python -m hoitool``: the command line (the one entry point outside the cli package that starts it)."""

from .cli.app import main

main()
