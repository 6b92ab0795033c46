"""A stand-in vision-language teacher for datasets without one: captions and triplets written from the manifest.

No VLLM runs offline on the synthetic set, so ``hoitool text simulate`` writes the import a teacher
would: a caption per video from what the manifest's annotation says happens in it (the synthetic
set's ``extra.turns``: who holds which object, in order) and one ``<class name>`` interaction per
label, replaced by another class on a fraction ``error_rate`` of the videos (a teacher that is
sometimes wrong, so label-free training is not trivially the labels). It is a test fixture for the
CL-HOI wiring, not knowledge: say so wherever its numbers are shown.
"""

from __future__ import annotations

import numpy as np

from hoitool.manifest import Manifest
from hoitool.text.cache import class_text
from hoitool.text.vlm_import import VideoText

SOURCE = (
    "simulated teacher (hoitool text simulate): captions from the manifest's annotation, class names as interactions"
)


def turn_caption(turns: list[dict]) -> str | None:
    """``A person in a blue shirt holds a green ball, then ...`` from the synthetic set's turns."""
    parts = [
        f"a person in a {turn['person_colour']} shirt holds a {turn['object_colour']} {turn['object_kind']}"
        for turn in turns
        if {"person_colour", "object_colour", "object_kind"} <= set(turn)
    ]
    return (", then ".join(parts).capitalize() + ".") if parts else None


def simulated_teacher(manifest: Manifest, error_rate: float = 0.1, seed: int = 0) -> dict[str, VideoText]:
    """Every manifest video's text as a teacher might give it (see the module docstring); seeded."""
    rng = np.random.default_rng(seed)
    texts = {}
    for video in manifest.sorted_videos():
        labels = list(video.labels)
        if manifest.num_classes > 1 and rng.random() < error_rate:
            labels = [int(rng.choice([c for c in range(manifest.num_classes) if c not in labels]))]
        caption = turn_caption((video.extra or {}).get("turns") or [])
        texts[video.id] = VideoText(
            video.id,
            captions=[caption] if caption else [],
            triplets=[(class_text(manifest.classes[c]), None) for c in labels],
            source=SOURCE,
        )
    return texts
