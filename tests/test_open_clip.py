"""The open_clip path of the text and image encoders (CL-HOI's CLIP towers), on a tiny random CLIP.

No weights can be downloaded, so the test registers a tiny CLIP architecture with open_clip, saves
its random weights to a local file and loads both towers through hoitool's ``open_clip:MODEL:WEIGHTS``
spec, as a user does with a real checkpoint. Skipped where ``open_clip_torch`` is not installed (it is
in the ``clip`` extra that ``make setup`` and CI install).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

open_clip = pytest.importorskip("open_clip", reason="open_clip_torch is not installed (pip install '.[clip]')")

from hoitool.errors import UsageError  # noqa: E402
from hoitool.text.encoders import load_text_encoder  # noqa: E402
from hoitool.text.image_encoders import load_image_encoder  # noqa: E402
from hoitool.text.regions import check_same_clip  # noqa: E402

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two random checkpoints of the registered tiny architecture (different seeds: different CLIPs)."""
    root = tmp_path_factory.mktemp("open_clip")
    (root / "hoitool-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(root / "hoitool-tiny-clip.json")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = open_clip.create_model("hoitool-tiny-clip", pretrained=None)
        paths.append(root / f"clip-{seed}.pt")
        torch.save(model.state_dict(), paths[-1])
    return paths


def test_both_towers_load_from_a_local_checkpoint_and_equal_open_clip(checkpoints):
    first, _ = checkpoints
    text = load_text_encoder(f"open_clip:hoitool-tiny-clip:{first}")
    image = load_image_encoder(f"open_clip:hoitool-tiny-clip:{first}")
    reference = open_clip.create_model("hoitool-tiny-clip", pretrained=str(first)).eval()
    phrases = ["a person holding a cup", "a person riding a horse"]
    tokens = open_clip.get_tokenizer("hoitool-tiny-clip")(phrases)
    with torch.no_grad():
        want_text = torch.nn.functional.normalize(reference.encode_text(tokens), dim=-1).numpy()
        crops = torch.rand(3, 3, image.size, image.size, generator=torch.Generator().manual_seed(0))
        want_image = torch.nn.functional.normalize(reference.encode_image(crops), dim=-1)
    got_text = np.asarray(text.encode(phrases), dtype=np.float32)
    got_text = got_text / np.linalg.norm(got_text, axis=-1, keepdims=True)
    assert got_text.shape == (2, 16) and np.allclose(got_text, want_text, atol=1e-5)
    assert image.size == 32 and image.dim == 16
    assert torch.allclose(image.embed_crops(crops), want_image, atol=1e-5)
    check_same_clip(text.identity(), image.identity(), 16, image.dim)  # one checkpoint's two towers: allowed


def test_towers_of_two_checkpoints_or_a_bad_file_are_refused(checkpoints, tmp_path):
    first, second = checkpoints
    text = load_text_encoder(f"open_clip:hoitool-tiny-clip:{first}")
    other = load_image_encoder(f"open_clip:hoitool-tiny-clip:{second}")
    with pytest.raises(UsageError, match="are not the same CLIP"):
        check_same_clip(text.identity(), other.identity(), 16, other.dim)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match=f"{broken}: open_clip could not load"):
        load_image_encoder(f"open_clip:hoitool-tiny-clip:{broken}")
