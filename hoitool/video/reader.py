"""Decode and sample frames from a video file (PyAV) or a folder of frame images (PIL).

Frame ``i`` always means the ``i``-th decoded frame (0-based, presentation
order) or the ``i``-th image of the folder in natural order, so the indices
stored by the boxes stage address the same pixels whichever stage decodes them.

A frame folder may hold more than its frames (CAD-120 keeps ``Depth_<n>.png``
beside ``RGB_<n>.png``; Charades flow has ``x``/``y`` images). Such a source is
named with a frame pattern, the folder plus a file name with one printf-style
number field, as ffmpeg's image sequences are: ``.../<vid>/RGB_%d.png``. Only the
matching files are frames, ordered by their number. A plain folder that mixes
several numbered series is refused rather than read with the series interleaved.

Reading decodes forward once from the start and keeps only the wanted frames:
seeking by timestamp is not frame-exact across containers and variable frame
rates, while a forward pass is. Every decoder or file problem becomes a
one-line :class:`VideoReadError` naming the file, so the extraction stages can
record the video as failed and go on.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hoitool.errors import HoitoolError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
PATTERN_FIELD = re.compile(r"%0?(\d*)d")  # the number field of a frame pattern: %d, %6d, %06d
KINDS = ("video", "frames")
# Codec threads (thread_type "AUTO") only for frames above 720p. Measured on 2 shared cores, decoding
# 96 H.264 frames: 128x128 18 ms plain vs 30 ms AUTO; 480x360 67 vs 72 ms; 1280x720 (48 frames) 157 vs
# 168 ms. DataLoader workers already keep the cores busy; only very large frames are left to threads.
THREADED_DECODE_PIXELS = 1280 * 720 + 1


class VideoReadError(HoitoolError):
    """A video or frame folder that cannot be read as asked (unreadable, truncated, empty, ...)."""


@dataclass
class VideoInfo:
    num_frames: int
    fps: float | None  # None for frame folders (the images carry no rate)
    height: int
    width: int


@dataclass
class SampledClip:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    indices: np.ndarray  # (T,) int64 frame indices
    valid: np.ndarray  # (T,) bool, False for padding
    fps: float | None
    height: int
    width: int


# -- sampling -----------------------------------------------------------------
def sample_indices(num_frames: int, T: int, clip: int = 0, num_clips: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``T`` frame indices from clip ``clip`` of ``num_clips``, and their validity mask.

    The rule:

    * The video's frames ``0 .. num_frames-1`` are cut into ``num_clips`` equal
      temporal segments; clip ``c`` holds frames ``c*N//n .. (c+1)*N//n - 1``.
      A clip that gets no frame (more clips than frames) holds the single frame
      at its centre, ``floor((c + 0.5) * N / n)``.
    * A clip of ``n >= T`` frames is cut into ``T`` equal segments and the frame
      at each segment's centre is taken: ``start + floor((k + 0.5) * n / T)``.
      All are valid.
    * A clip of ``n < T`` frames gives every frame once, in order, then repeats
      the last index for the remaining ``T - n`` slots, marked ``valid=False``.

    Raises ValueError for ``num_frames < 1`` (an empty video is the caller's
    :class:`VideoReadError`), ``T < 1`` or a clip outside ``0 .. num_clips-1``.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames}: nothing to sample from")
    if T < 1:
        raise ValueError(f"T={T}: need at least one frame")
    if num_clips < 1 or not 0 <= clip < num_clips:
        raise ValueError(f"clip={clip} of num_clips={num_clips}: need 0 <= clip < num_clips")
    start = clip * num_frames // num_clips
    count = (clip + 1) * num_frames // num_clips - start
    if count == 0:
        start, count = (2 * clip + 1) * num_frames // (2 * num_clips), 1
    if count >= T:
        offsets = (2 * np.arange(T, dtype=np.int64) + 1) * count // (2 * T)
        return start + offsets, np.ones(T, dtype=bool)
    offsets = np.minimum(np.arange(T, dtype=np.int64), count - 1)
    return start + offsets, np.arange(T) < count


# -- frame folders --------------------------------------------------------------
class MixedFramesError(VideoReadError):
    """A frame folder holding several numbered image series, read without a frame pattern."""


def _natural_key(name: str) -> tuple:
    """``frame_2.png`` before ``frame_10.png``: digits compare as numbers, the rest as text."""
    return tuple((0, int(part), part) if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name))


def split_frame_pattern(path: Path | str) -> tuple[Path, re.Pattern | None]:
    """``(folder, regex)`` of a source: a frame pattern ``folder/RGB_%d.png`` (``%d`` any number,
    ``%06d`` at least six digits), or ``(path, None)`` for a plain folder."""
    path = Path(path)
    fields = PATTERN_FIELD.findall(path.name)
    if not fields:
        return path, None
    if len(fields) > 1 or "%" in PATTERN_FIELD.sub("", path.name):
        raise VideoReadError(f"{path}: a frame pattern has exactly one number field such as %d or %06d")
    width = int(fields[0] or 0)
    field = PATTERN_FIELD.search(path.name)
    assert field is not None  # findall found exactly one
    before, after = path.name[: field.start()], path.name[field.end() :]
    digits = rf"(\d{{{width},}})" if width else r"(\d+)"
    return path.parent, re.compile(re.escape(before) + digits + re.escape(after) + r"\Z")


def series_name(name: str) -> str:
    """The image series a file belongs to: its name with every number replaced by ``<n>``."""
    return re.sub(r"\d+", "<n>", name)


def _list_images(folder: Path, pattern: re.Pattern | None = None) -> list[str]:
    """Image names in ``folder`` (those matching ``pattern`` where one is given)."""
    if not folder.is_dir():
        raise VideoReadError(
            f"{folder}: frame folder not found" if not folder.exists() else f"{folder}: not a folder of frames"
        )
    try:
        with os.scandir(folder) as entries:
            names = [entry.name for entry in entries if entry.is_file()]
    except OSError as exc:
        raise VideoReadError(f"{folder}: cannot list frames ({exc.strerror or exc})") from None
    if pattern is not None:
        return [name for name in names if pattern.match(name)]
    return [name for name in names if name.lower().endswith(IMAGE_SUFFIXES)]


def _check_one_series(folder: Path, names: list[str]) -> None:
    """Refuse a folder whose numbered images form several series (e.g. RGB_<n>.png and Depth_<n>.png)."""
    series: dict[str, int] = {}
    for name in names:
        key = series_name(name) if re.search(r"\d", name) else "unnumbered images"
        series[key] = series.get(key, 0) + 1
    if len(series) > 1:
        largest = sorted(series.items(), key=lambda item: (-item[1], item[0]))
        found = ", ".join(f"{key} ({count})" for key, count in largest[:4])
        example = next((key for key, _ in largest if key != "unnumbered images"), "frame_<n>.jpg")
        raise MixedFramesError(
            f"{folder}: holds {len(series)} image series ({found}); name the frames with a pattern, "
            f"e.g. {folder / example.replace('<n>', '%d')}"
        )


def list_frame_files(source: Path | str) -> list[Path]:
    """The frames of a folder or frame pattern: pattern matches by number, else every image in natural order.

    Raises VideoReadError if the folder is missing or has no frame, MixedFramesError
    if a plain folder holds several numbered series, and for two files with one number.
    """
    folder, pattern = split_frame_pattern(source)
    names = _list_images(folder, pattern)
    if not names:
        what = "no .jpg/.jpeg/.png files" if pattern is None else f"no file matches {Path(source).name}"
        raise VideoReadError(f"{source}: empty frame folder ({what})")
    if pattern is None:
        _check_one_series(folder, names)
        return [folder / name for name in sorted(names, key=_natural_key)]
    numbered = sorted((int(match.group(1)), name) for name in names if (match := pattern.match(name)))  # all match
    for (number, name), (next_number, next_name) in itertools.pairwise(numbered):
        if number == next_number:
            raise VideoReadError(f"{folder}: {name} and {next_name} both have frame number {number}")
    return [folder / name for _, name in numbered]


def _load_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise VideoReadError(f"{path}: unreadable frame image ({exc})") from None


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise VideoReadError(f"{path}: unreadable frame image ({exc})") from None
    return height, width


def _read_folder(folder: Path, indices: np.ndarray) -> np.ndarray:
    files = list_frame_files(folder)
    wanted = np.unique(indices)
    if len(wanted) and wanted[-1] >= len(files):
        raise VideoReadError(f"{folder}: has {len(files)} frames, need frame {int(wanted[-1])}")
    images = {int(i): _load_image(files[i]) for i in wanted}
    shapes = {image.shape for image in images.values()}
    if len(shapes) > 1:
        raise VideoReadError(f"{folder}: frames differ in size ({', '.join(sorted(f'{s[1]}x{s[0]}' for s in shapes))})")
    if not images:
        height, width = _image_size(files[0])
        return np.zeros((0, height, width, 3), np.uint8)
    return np.stack([images[int(i)] for i in indices])


# -- video files ----------------------------------------------------------------
def _open(path: Path):
    import av

    if not path.exists():
        raise VideoReadError(f"{path}: video file not found")
    if path.is_dir():
        raise VideoReadError(f"{path}: is a folder, not a video file (use kind 'frames' for frame folders)")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoReadError(f"{path}: unreadable video ({_reason(exc)})") from None
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{path}: no video stream")
    return container


def _reason(exc: Exception) -> str:
    """FFmpeg messages repeat the path; keep the part that says what is wrong."""
    return getattr(exc, "strerror", None) or str(exc)


def _probe_video(path: Path) -> VideoInfo:
    """Count frames by demuxing (cheap: no decoding); the header count is often 0 or wrong.

    A packet the demuxer flags as incomplete means the file was cut short (or is
    damaged there): that video is refused here rather than sampled from a prefix.
    """
    import av

    container = _open(path)
    try:
        stream = container.streams.video[0]
        height, width = stream.codec_context.height, stream.codec_context.width
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        count = 0
        for packet in container.demux(stream):
            if packet.size == 0:  # the demuxer's end-of-stream flush packet
                continue
            if packet.is_corrupt:
                raise VideoReadError(
                    f"{path}: truncated or damaged: packet {count + 1} of the video stream is incomplete"
                )
            count += 1
        if not (height and width) and count:
            container.seek(0)
            first = next(container.decode(stream))
            height, width = first.height, first.width
    except (av.FFmpegError, OSError, ValueError, StopIteration) as exc:
        raise VideoReadError(
            f"{path}: unreadable video ({_reason(exc) if str(exc) else 'no decodable frame'})"
        ) from None
    finally:
        container.close()
    if count == 0:
        raise VideoReadError(f"{path}: video stream has no frames")
    return VideoInfo(count, float(rate) if rate else None, int(height), int(width))


def _read_video(path: Path, indices: np.ndarray) -> np.ndarray:
    """One forward decode; convert only the wanted frames; stop after the last one."""
    import av

    wanted = set(int(i) for i in indices)
    last = max(wanted)
    found: dict[int, np.ndarray] = {}
    decoded = 0
    cut_short = False
    container = _open(path)
    try:
        stream = container.streams.video[0]
        if stream.codec_context.height * stream.codec_context.width >= THREADED_DECODE_PIXELS:
            stream.thread_type = "AUTO"
        for packet in container.demux(stream):
            if packet.is_corrupt:  # cut short here: flush what is decodable and stop
                cut_short, packet = True, None
            for frame in stream.decode(packet):
                if decoded in wanted:
                    found[decoded] = frame.to_ndarray(format="rgb24")
                decoded += 1
                if decoded > last:
                    break
            if decoded > last or packet is None:
                break
    except (av.FFmpegError, OSError, ValueError) as exc:
        missing = min(wanted - found.keys(), default=last)
        raise VideoReadError(
            f"{path}: decode error after {decoded} frames, need frame {missing} ({_reason(exc)})"
        ) from None
    finally:
        container.close()
    if len(found) < len(wanted):
        missing = min(wanted - found.keys())
        if cut_short:
            raise VideoReadError(f"{path}: truncated: decoded {decoded} frames, need frame {missing}")
        raise VideoReadError(f"{path}: has only {decoded} frames, need frame {missing}")
    shapes = {array.shape for array in found.values()}
    if len(shapes) > 1:
        raise VideoReadError(f"{path}: frame size changes within the video ({len(shapes)} sizes)")
    return np.stack([found[int(i)] for i in indices])


# -- public API -----------------------------------------------------------------
def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected 'video' or 'frames'")


def probe(path: Path | str, kind: str) -> VideoInfo:
    """Frame count, rate and size of a video file (``kind="video"``) or frame folder (``"frames"``)."""
    _check_kind(kind)
    path = Path(path)
    if kind == "video":
        return _probe_video(path)
    files = list_frame_files(path)
    height, width = _image_size(files[0])
    return VideoInfo(len(files), None, height, width)


def read_frames(path: Path | str, kind: str, indices: np.ndarray) -> np.ndarray:
    """Frames ``indices`` (any order, repeats allowed) as uint8 ``(len(indices), H, W, 3)`` RGB.

    Raises VideoReadError when the file cannot be decoded or ends before a
    requested frame; never returns frames it did not decode.
    """
    _check_kind(kind)
    path = Path(path)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(indices) and indices.min() < 0:
        raise ValueError(f"negative frame index {int(indices.min())}")
    if kind == "frames":
        return _read_folder(path, indices)
    if not len(indices):
        info = _probe_video(path)
        return np.zeros((0, info.height, info.width, 3), np.uint8)
    return _read_video(path, indices)


def load_clip(path: Path | str, kind: str, T: int, clip: int = 0, num_clips: int = 1) -> SampledClip:
    """Probe, sample ``T`` frames of clip ``clip`` of ``num_clips`` (see :func:`sample_indices`) and decode them."""
    info = probe(path, kind)
    indices, valid = sample_indices(info.num_frames, T, clip, num_clips)
    frames = read_frames(path, kind, indices)
    height, width = frames.shape[1:3]
    return SampledClip(frames, indices, valid, info.fps, int(height), int(width))
