"""The paper's video backbones, I3D-R50 and SlowFast-R50, from PyTorchVideo's model definitions.

GLIDN's Charades features come from I3D-R50 and SlowFast-R50 (8x8, Kinetics-400).
The networks are PyTorchVideo's own (``pytorchvideo.models.hub``, built with
``pretrained=False``: nothing is downloaded); weights are the model zoo's
``I3D_8x8_R50.pyth`` / ``SLOWFAST_8x8_R50.pyth`` (``{"model_state": state dict of
that very module}``), read from torch.hub's cache or from ``--weights PATH``.

The networks are cut before the classification head. SlowFast's trunk takes the
T sampled frames as its fast pathway and every alpha-th of them as its slow one
(PySlowFast's ``pack_pathway_output`` rule) and returns both maps; the
backbone maps each back to the frames and concatenates them, as PySlowFast's
RoI head concatenates its per-pathway RoIAlign outputs.
"""

from __future__ import annotations

import warnings
from typing import cast

import torch
from torch import nn

from hoitool.errors import UsageError
from hoitool.features.common import LayerSpec
from hoitool.weights import ZooWeights, load_model

INSTALL = "pip install 'hoitool[video]' (PyTorchVideo 0.1.5 and its fvcore / iopath)"
# Kinetics normalisation of PyTorchVideo's / PySlowFast's recipes (frames in [0, 1], RGB).
MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)
SLOWFAST_ALPHA = 4  # frames of the fast pathway per frame of the slow one (SLOWFAST_8x8_R50)
_ZOO = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics"

# I3D-R50: stem (temporal kernel 5, stride 1), res2, a temporal max-pool (2, stride 2), res3..res5.
# Blocks kept for each layer; slice j's centre is j * stride + offset input frames (the pool puts it
# between frames 2j and 2j+1; every temporal convolution after it is odd-sized and symmetrically padded).
_I3D_LAYERS = {
    "res2": (2, LayerSpec(256, 4, 1)),
    "res3": (4, LayerSpec(512, 8, 2, min_frames=2, temporal_offset=0.5)),
    "res4": (5, LayerSpec(1024, 16, 2, min_frames=2, temporal_offset=0.5)),
    "res5": (6, LayerSpec(2048, 32, 2, min_frames=2, temporal_offset=0.5)),
}
# SlowFast-R50 up to res5 (the head's input; earlier stages' outputs carry the lateral fusions).
# Channels: slow 2048 + fast 256; neither pathway strides in time, so the slow pathway's slices sit on
# its input frames and the fast pathway's on every frame.
_SLOWFAST_LAYERS = {
    "res5": (5, LayerSpec(2048 + 256, 32, SLOWFAST_ALPHA, min_frames=SLOWFAST_ALPHA, frame_multiple=SLOWFAST_ALPHA)),
}
LAYERS = {"i3d_r50": _I3D_LAYERS, "slowfast_r50": _SLOWFAST_LAYERS}
DEFAULT_LAYER = {"i3d_r50": "res5", "slowfast_r50": "res5"}
WEIGHTS = {
    arch: ZooWeights(f"{_ZOO}/{name}", f"from pytorchvideo.models import hub; hub.{arch}(pretrained=True)")
    for arch, name in (("i3d_r50", "I3D_8x8_R50.pyth"), ("slowfast_r50", "SLOWFAST_8x8_R50.pyth"))
}


def available() -> bool:
    """Whether PyTorchVideo can be imported (the ``video`` extra)."""
    try:
        _hub()
    except UsageError:
        return False
    return True


def _hub():
    """``pytorchvideo.models.hub``, or a one-line error saying how to install it."""
    try:
        with warnings.catch_warnings():  # its import scripts a module with torch.jit (a FutureWarning)
            warnings.simplefilter("ignore")
            from pytorchvideo.models import hub
    except ImportError:
        raise UsageError(f"the I3D-R50 / SlowFast-R50 backbones need PyTorchVideo: {INSTALL}") from None
    return hub


def slow_frames(count: int, alpha: int = SLOWFAST_ALPHA) -> torch.Tensor:
    """Indices of the slow pathway's frames among ``count``: PySlowFast's ``linspace(0, T-1, T//alpha).long()``."""
    return torch.linspace(0, count - 1, count // alpha).long()


class SlowFastTrunk(nn.Module):
    """SlowFast up to a stage: clip (B, 3, T, H, W) -> [slow map, fast map], each (B, C_p, t_p, h, w)."""

    def __init__(self, blocks: nn.ModuleList, alpha: int = SLOWFAST_ALPHA):
        super().__init__()
        self.blocks, self.alpha = blocks, alpha

    def forward(self, clip: torch.Tensor) -> list[torch.Tensor]:
        pathways = [clip.index_select(2, slow_frames(clip.shape[2], self.alpha).to(clip.device)), clip]
        for block in self.blocks:
            pathways = block(pathways)
        return pathways

    def input_frames(self, count: int) -> list[torch.Tensor]:
        """Which of the clip's frames each pathway sees (for the temporal mapping)."""
        return [slow_frames(count, self.alpha), torch.arange(count)]


def build_network(arch: str, layer: str, weights, seed: int) -> tuple[nn.Module, str]:
    """PyTorchVideo's ``arch`` with the resolved weights, cut after ``layer``; (network, weights fingerprint)."""
    hub = _hub()
    builder = getattr(hub, arch)
    model, fingerprint = load_model(
        arch, weights, seed=seed, default_enum=WEIGHTS[arch], builder=builder, pretrained=False
    )
    end = LAYERS[arch][layer][0]
    blocks = list(cast(nn.ModuleList, model.blocks))[:end]
    if arch == "slowfast_r50":
        return SlowFastTrunk(nn.ModuleList(blocks)), fingerprint
    return nn.Sequential(*blocks), fingerprint
