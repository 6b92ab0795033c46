"""Video decoding and frame sampling (hoitool.video.reader) on tiny files encoded here."""

from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from hoitool.errors import HoitoolError
from hoitool.video.reader import (
    MixedFramesError,
    VideoReadError,
    list_frame_files,
    load_clip,
    probe,
    read_frames,
    sample_indices,
)

LEVEL = 8  # frame i is filled with grey level LEVEL * i (plus noise), so decoded frames can be identified


def frame_number(image: np.ndarray) -> int:
    return int(round(float(image.mean()) / LEVEL))


def synthetic_frames(count: int, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    """Noisy grey frames: noise makes every frame cost bytes, so cutting a file cuts frames."""
    rng = np.random.default_rng(seed)
    return [np.clip(LEVEL * i + rng.integers(-12, 13, (size, size, 3)), 0, 255).astype(np.uint8) for i in range(count)]


def encode(path, frames, fps=8, faststart=False):
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(
            "libx264" if "libx264" in av.codecs_available else "mpeg4", rate=Fraction(fps).limit_denominator(1001)
        )
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.options = {"crf": "10"} if stream.codec_context.name == "libx264" else {}
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    return encode(tmp_path_factory.mktemp("video") / "clip.mp4", synthetic_frames(24))


@pytest.fixture(scope="module")
def frame_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames") / "video"
    folder.mkdir()
    for i, array in enumerate(synthetic_frames(12, size=24)):
        Image.fromarray(array).save(folder / f"frame_{i + 1}.png")  # frame_10 must sort after frame_9
    (folder / "notes.txt").write_text("not a frame")
    return folder


# -- sampling --------------------------------------------------------------------------
def test_sample_indices_uniform_segment_centres():
    indices, valid = sample_indices(24, 8)
    assert indices.dtype == np.int64 and indices.tolist() == [1, 4, 7, 10, 13, 16, 19, 22]
    assert valid.dtype == bool and valid.all()
    assert sample_indices(10, 10)[0].tolist() == list(range(10))


def test_sample_indices_clips_cover_equal_segments():
    clips = [sample_indices(30, 3, clip, 3)[0].tolist() for clip in range(3)]
    assert clips == [[1, 5, 8], [11, 15, 18], [21, 25, 28]]  # floor((2k + 1) * 10 / 6) within each clip
    assert sample_indices(30, 1, 2, 3)[0].tolist() == [25]


def test_short_video_takes_every_frame_then_pads_invalid():
    indices, valid = sample_indices(3, 5)
    assert indices.tolist() == [0, 1, 2, 2, 2] and valid.tolist() == [True, True, True, False, False]
    indices, valid = sample_indices(10, 4, clip=1, num_clips=4)  # clip 1 holds frames 2..4
    assert indices.tolist() == [2, 3, 4, 4] and valid.tolist() == [True, True, True, False]
    indices, valid = sample_indices(2, 3, clip=3, num_clips=4)  # more clips than frames: the clip's centre frame
    assert indices.tolist() == [1, 1, 1] and valid.tolist() == [True, False, False]


@pytest.mark.parametrize("args", [(0, 4), (5, 0), (5, 2, 2, 2), (5, 2, -1, 2), (5, 2, 0, 0)])
def test_sample_indices_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        sample_indices(*args)


# -- video files -----------------------------------------------------------------------
def test_probe_and_read_mp4(mp4):
    info = probe(mp4, "video")
    assert (info.num_frames, info.height, info.width) == (24, 32, 32) and info.fps == pytest.approx(8.0)
    frames = read_frames(mp4, "video", np.array([5, 0, 5, 23, 11]))
    assert frames.dtype == np.uint8 and frames.shape == (5, 32, 32, 3)
    assert [frame_number(f) for f in frames] == [5, 0, 5, 23, 11]
    np.testing.assert_array_equal(frames[0], frames[2])
    assert read_frames(mp4, "video", np.array([], np.int64)).shape == (0, 32, 32, 3)


def test_load_clip_mp4(mp4):
    clip = load_clip(mp4, "video", T=4, clip=1, num_clips=2)
    assert clip.indices.tolist() == [13, 16, 19, 22] and clip.valid.all()
    assert [frame_number(f) for f in clip.frames] == [13, 16, 19, 22]
    assert (clip.height, clip.width, clip.fps) == (32, 32, pytest.approx(8.0))
    short = load_clip(mp4, "video", T=30)
    assert short.frames.shape == (30, 32, 32, 3) and short.valid.sum() == 24 and short.indices[-1] == 23


@pytest.mark.parametrize("fps", [1, 12.5, 30000 / 1001, 60])
def test_any_frame_rate(tmp_path, fps):
    path = encode(tmp_path / "rate.mp4", synthetic_frames(9), fps=fps)
    info = probe(path, "video")
    assert info.num_frames == 9 and info.fps == pytest.approx(fps, rel=1e-3)
    clip = load_clip(path, "video", T=3)
    assert [frame_number(f) for f in clip.frames] == clip.indices.tolist() == [1, 4, 7]


def test_frame_past_the_end_is_an_error(mp4):
    with pytest.raises(VideoReadError, match="has only 24 frames, need frame 24"):
        read_frames(mp4, "video", np.array([3, 24]))


def test_corrupt_and_missing_files(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    for call in (
        lambda: probe(corrupt, "video"),
        lambda: read_frames(corrupt, "video", np.array([0])),
        lambda: load_clip(corrupt, "video", 4),
    ):
        with pytest.raises(VideoReadError, match="corrupt.mp4: unreadable video") as error:
            call()
        assert "\n" not in str(error.value) and isinstance(error.value, HoitoolError)
    with pytest.raises(VideoReadError, match="not found"):
        probe(tmp_path / "absent.mp4", "video")


def test_truncated_file_fails_when_a_late_frame_is_needed(tmp_path):
    """moov atom first (streamable mp4): the index promises 24 frames, the data holds about half."""
    path = encode(tmp_path / "whole.mp4", synthetic_frames(24), faststart=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert frame_number(read_frames(cut, "video", np.array([1]))[0]) == 1
    with pytest.raises(VideoReadError, match=r"cut.mp4: truncated: decoded \d+ frames, need frame 23"):
        read_frames(cut, "video", np.array([1, 23]))
    with pytest.raises(VideoReadError, match="truncated"):
        probe(cut, "video")


def test_truncated_file_without_index(tmp_path):
    """moov atom last (the default): a cut file has no index at all."""
    path = encode(tmp_path / "whole.mp4", synthetic_frames(24))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(VideoReadError, match="cut.mp4"):
        load_clip(cut, "video", 8)


# -- frame folders ---------------------------------------------------------------------
def test_frame_folder_natural_order(frame_folder):
    names = [path.name for path in list_frame_files(frame_folder)]
    assert names == [f"frame_{i}.png" for i in range(1, 13)]
    info = probe(frame_folder, "frames")
    assert (info.num_frames, info.height, info.width, info.fps) == (12, 24, 24, None)
    frames = read_frames(frame_folder, "frames", np.array([9, 2, 9]))
    assert frames.shape == (3, 24, 24, 3) and [frame_number(f) for f in frames] == [9, 2, 9]
    clip = load_clip(frame_folder, "frames", T=16)
    assert clip.valid.sum() == 12 and [frame_number(f) for f in clip.frames[:12]] == list(range(12))


def test_frame_folder_errors(tmp_path, frame_folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoReadError, match="empty frame folder"):
        probe(empty, "frames")
    with pytest.raises(VideoReadError, match="frame folder not found"):
        load_clip(tmp_path / "absent", "frames", 4)
    with pytest.raises(VideoReadError, match="has 12 frames, need frame 12"):
        read_frames(frame_folder, "frames", np.array([12]))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "0001.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(VideoReadError, match="0001.jpg: unreadable frame image"):
        read_frames(broken, "frames", np.array([0]))


def test_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        probe("x", "audio")


# -- frame patterns ----------------------------------------------------------------------
def test_frame_pattern_reads_one_series_in_numeric_order(tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    for n in (1, 2, 10, 11):
        Image.fromarray(np.full((8, 8, 3), n, np.uint8)).save(
            folder / f"img-{n:06d}.jpg" if n < 11 else folder / f"img-{n:06d}.png"
        )
        Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(folder / f"img-{n:06d}x.jpg")  # flow-like images
    assert [p.name for p in list_frame_files(folder / "img-%06d.jpg")] == [
        "img-000001.jpg",
        "img-000002.jpg",
        "img-000010.jpg",
    ]
    assert probe(folder / "img-%d.png", "frames").num_frames == 1
    frames = read_frames(folder / "img-%06d.jpg", "frames", np.array([2, 0]))
    assert np.abs(frames[:, 0, 0, 0].astype(int) - [10, 1]).max() <= 2  # JPEG rounding
    with pytest.raises(MixedFramesError, match=r"holds 3 image series \(img-<n>x\.jpg \(4\), img-<n>\.jpg \(3\)"):
        list_frame_files(folder)
    with pytest.raises(VideoReadError, match="no file matches RGB_%d.png"):
        probe(folder / "RGB_%d.png", "frames")
    with pytest.raises(VideoReadError, match="exactly one number field"):
        probe(folder / "a%d_%d.jpg", "frames")
    (folder / "img-1.jpg").write_bytes((folder / "img-000001.jpg").read_bytes())
    with pytest.raises(VideoReadError, match="both have frame number 1"):
        list_frame_files(folder / "img-%d.jpg")


def test_unnumbered_images_alone_are_one_series(tmp_path):
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / name)
    assert [p.name for p in list_frame_files(tmp_path)] == ["a.png", "b.png"]
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "frame_1.png")
    with pytest.raises(MixedFramesError, match="unnumbered images"):
        list_frame_files(tmp_path)
