"""hoitool: human-object interaction context graphs and their distillation (GLIDN) as resumable stages."""

__version__ = "0.1.0"
