"""The extraction stages: sampled frames -> boxes store -> features store."""
