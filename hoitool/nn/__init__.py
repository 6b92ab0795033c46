"""Graph models of GLIDN: dense masked graph attention, context graphs, classifiers."""

from hoitool.nn.gat import GATLayer
from hoitool.nn.graphs import frame_adjacency, global_adjacency, local_adjacency
from hoitool.nn.models import MODEL_DEFAULTS, ContextGraphNet, build_model

__all__ = [
    "GATLayer",
    "global_adjacency",
    "local_adjacency",
    "frame_adjacency",
    "ContextGraphNet",
    "MODEL_DEFAULTS",
    "build_model",
]
