"""The ``hoitool`` command line (Typer)."""
