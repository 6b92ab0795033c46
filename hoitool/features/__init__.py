"""Node features: frame preprocessing (transforms), frozen backbones (backbones) and per-box pooling (nodes)."""
