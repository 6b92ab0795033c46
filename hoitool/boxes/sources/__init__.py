"""The box sources, one module each; every module registers its source (hoitool.boxes.registry)."""
