"""Helpers shared by test modules (imported as ``from helpers import run_cli``)."""

import signal

import pytest

from hoitool.cli.app import main


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """The CLI in-process: (exit code, stdout, stderr with rich's wrapping undone); restores the signal handlers main installs."""
    code, out, err = run_cli_raw(argv, capsys)
    return code, out, " ".join(err.split())


def run_cli_raw(argv, capsys) -> tuple[int, str, str]:
    """As :func:`run_cli`, with stderr as printed (to count its lines)."""
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    capsys.readouterr()
    try:
        with pytest.raises(SystemExit) as exit_info:
            main([str(arg) for arg in argv])
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def rendered_crop_features(root, flip: bool = False):
    """A rendered synthetic set in ``root`` (1 video per class, 6 frames of 32 px), its dataset boxes (3 frames) and
    random-weight ResNet-18 crop features (``flip``: with mirrored views): ``root/{data,boxes.h5,features.h5}``."""
    from hoitool.datasets.common import prepare_dataset
    from hoitool.extract.boxes import extract_boxes
    from hoitool.extract.features import extract_features

    prepare_dataset("synthetic", root / "data", {"videos_per_class": 1, "frames": 6, "size": 32})
    extract_boxes(root / "data" / "manifest.json", root / "boxes.h5", {"source": "dataset", "frames": 3})
    features = {
        "backbone": {"arch": "resnet18", "weights": "random", "layer": "layer1"},
        "mode": "crop",
        "crop_size": 16,
        "flip": flip,
        "frame_features": False,
        "runtime": {"device": "cpu", "workers": 0},
    }
    extract_features(root / "boxes.h5", root / "features.h5", features)
    return root
