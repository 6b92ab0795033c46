"""Video decoding and frame sampling shared by every stage that needs pixels."""

from hoitool.video.reader import (
    SampledClip,
    VideoInfo,
    VideoReadError,
    load_clip,
    probe,
    read_frames,
    sample_indices,
)

__all__ = ["SampledClip", "VideoInfo", "VideoReadError", "load_clip", "probe", "read_frames", "sample_indices"]
