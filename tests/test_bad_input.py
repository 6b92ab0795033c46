"""The bad-input and ordinary-fault list of issue 6, run through the CLI as a user types it.

Every case asserts three things: the exit code, a single ``error:`` line on stderr (no
traceback), and that nothing was written or deleted (a snapshot of the folders involved
is taken before the command and compared after it).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import run_cli_raw
from test_train import make_features, request

from hoitool.train.loop import train


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and folder under ``roots`` with a digest of its bytes (folders: 'dir')."""
    state = {}
    for root in roots:
        if not root.exists():
            continue
        for path in sorted([root, *root.rglob("*")]):
            state[str(path)] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def assert_one_line_error(code: int, err: str, expected_code: int, *needles: str) -> None:
    """The command ends with exactly one ``error:`` line (progress lines may precede it), never a traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == expected_code, err
    assert "Traceback" not in err, err
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    return make_features(tmp_path_factory.mktemp("bad-input"))


TINY = [
    "--epochs",
    "1",
    "--batch-size",
    "4",
    "--device",
    "cpu",
    "--workers",
    "0",
    "--set",
    "model.hidden=8",
    "--set",
    "model.heads=1",
]


@pytest.fixture(scope="module")
def teacher(features: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "run"
    train(request(features, out, train__epochs=1))
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from hoitool.datasets.synthetic import generate

    root = tmp_path_factory.mktemp("dataset") / "ds"
    generate(root, videos_per_class=1, num_frames=8, size=64, seed=1)
    return root


def foreign_folder(parent: Path, name: str = "thesis") -> Path:
    folder = parent / name
    folder.mkdir()
    (folder / "thesis.tex").write_text("\\section{Results}\n")
    (folder / "data.csv").write_text("a,b\n1,2\n")
    return folder


# -- data loss: --force / --resume on folders hoitool did not create -------------------------------------------------
@pytest.mark.parametrize("flag", ["--force", "--resume"])
def test_training_never_touches_a_dataset_folder(features, dataset, flag, capsys):
    before = snapshot(dataset)
    code, _, err = run_cli_raw(["train-teacher", features, "--view", "global", "--out", dataset, flag, *TINY], capsys)
    assert_one_line_error(code, err, 2, str(dataset))
    assert snapshot(dataset) == before


@pytest.mark.parametrize("flag", ["--force", "--resume"])
def test_training_never_touches_foreign_files(features, tmp_path, flag, capsys):
    folder = foreign_folder(tmp_path)
    before = snapshot(folder)
    code, _, err = run_cli_raw(["train-teacher", features, "--view", "global", "--out", folder, flag, *TINY], capsys)
    assert_one_line_error(code, err, 2, str(folder))
    assert snapshot(folder) == before


@pytest.mark.parametrize("flag", ["--force", "--resume"])
def test_distill_never_touches_foreign_files(features, teacher, tmp_path, flag, capsys):
    folder = foreign_folder(tmp_path)
    before = snapshot(folder, teacher)
    code, _, err = run_cli_raw(
        ["distill", features, "--view", "local", "--teacher", teacher, "--out", folder, flag, *TINY], capsys
    )
    assert_one_line_error(code, err, 2, str(folder))
    assert snapshot(folder, teacher) == before


def test_cache_merge_force_never_deletes_a_foreign_folder(features, tmp_path, capsys):
    folder = foreign_folder(tmp_path, "merged.h5")
    before = snapshot(folder)
    code, _, err = run_cli_raw(["cache", "merge", features, "--out", folder, "--force"], capsys)
    assert_one_line_error(code, err, 2, str(folder))
    assert snapshot(folder) == before


def test_extract_force_never_deletes_a_foreign_folder(dataset, tmp_path, capsys):
    folder = foreign_folder(tmp_path, "boxes.zarr")
    before = snapshot(folder, dataset)
    code, _, err = run_cli_raw(
        [
            "extract",
            "boxes",
            dataset,
            "--out",
            folder,
            "--source",
            "dataset",
            "--frames",
            "2",
            "--workers",
            "0",
            "--force",
        ],
        capsys,
    )
    assert_one_line_error(code, err, 2, str(folder))
    assert snapshot(folder, dataset) == before


# -- bad values: refused before any work, nothing written ---------------------------------------------------------------
@pytest.mark.parametrize(
    "args, needle",
    [
        (["--lr", "-1"], "lr"),
        (["--set", "optim.lr=abc"], "optim.lr"),
        (["--epochs", "0"], "epochs"),
        (["--set", "optim.weight_decay=-0.1"], "weight_decay"),
    ],
)
def test_bad_training_values_write_nothing(features, tmp_path, args, needle, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli_raw(["train-teacher", features, "--view", "global", "--out", out, *TINY, *args], capsys)
    assert_one_line_error(code, err, 2, needle)
    assert not out.exists()


@pytest.mark.parametrize(
    "args, needle", [(["--generalized", "1.5"], "generalized"), (["--lambda2", "-1"], "lambda2"), (["--T", "0"], "T")]
)
def test_bad_distillation_values_write_nothing(features, teacher, tmp_path, args, needle, capsys):
    out = tmp_path / "student"
    code, _, err = run_cli_raw(
        ["distill", features, "--view", "local", "--teacher", teacher, "--out", out, *TINY, *args], capsys
    )
    assert_one_line_error(code, err, 2, needle)
    assert not out.exists()


def test_unfinished_teacher_is_one_line(features, tmp_path, capsys):
    unfinished = tmp_path / "teacher"
    code, _, err = run_cli_raw(["train-teacher", features, "--view", "global", "--out", unfinished, *TINY], capsys)
    assert code == 0, err
    (unfinished / "outputs.json").unlink()
    out = tmp_path / "student"
    code, _, err = run_cli_raw(
        ["distill", features, "--view", "local", "--teacher", unfinished, "--out", out, *TINY], capsys
    )
    assert_one_line_error(code, err, 2, str(unfinished))
    assert not out.exists()


@pytest.mark.parametrize(
    "command",
    [
        ["train-teacher", "{features}", "--view", "global", "--out", "{out}"],
        ["extract", "boxes", "{dataset}", "--out", "{out}.h5"],
        ["extract", "features", "{features}", "--out", "{out}.h5"],
        ["prepare", "synthetic", "--out", "{out}"],
    ],
)
def test_config_naming_a_folder_is_one_line(features, dataset, tmp_path, command, capsys):
    folder = tmp_path / "configs"
    folder.mkdir()
    out = tmp_path / "out"
    argv = [part.format(features=features, dataset=dataset, out=out) for part in command]
    code, _, err = run_cli_raw([*argv, "--config", folder], capsys)
    assert_one_line_error(code, err, 2, str(folder), "folder")
    assert sorted(tmp_path.iterdir()) == [folder]


# -- damaged inputs ----------------------------------------------------------------------------------------------------
def _damaged_copy(features: Path, tmp_path: Path, damage: str) -> Path:
    """A copy of the features store with its HDF5 segment replaced by garbage or cut in half (or, for
    ``garbage-file``, a file of garbage where a store is expected, as a damaged old single-file store)."""
    broken = tmp_path / "broken.h5"
    if damage == "garbage-file":
        broken.write_bytes(os.urandom(4096))
        return broken
    shutil.copytree(features, broken)
    segment = sorted((broken / "segments").glob("*.h5"))[0]
    data = segment.read_bytes()
    segment.write_bytes(os.urandom(4096) if damage == "garbage" else data[: len(data) // 2])
    return broken


@pytest.mark.parametrize("damage", ["garbage", "truncated", "garbage-file"])
@pytest.mark.parametrize("command", [["cache", "info"], ["cache", "verify"]])
def test_corrupt_hdf5_is_one_line(features, tmp_path, damage, command, capsys):
    broken = _damaged_copy(features, tmp_path, damage)
    code, _, err = run_cli_raw([*command, broken], capsys)
    assert code in (1, 2)
    assert_one_line_error(code, err, code, str(broken))


@pytest.mark.parametrize("damage", ["truncated", "garbage-file"])
def test_training_on_a_corrupt_store_is_one_line(features, tmp_path, damage, capsys):
    broken = _damaged_copy(features, tmp_path, damage)
    out = tmp_path / "run"
    code, _, err = run_cli_raw(["train-teacher", broken, "--view", "global", "--out", out, *TINY], capsys)
    assert code in (1, 2)
    assert_one_line_error(code, err, code, str(broken))
    assert not out.exists()


# -- file-system faults: a read-only folder, a full disk -------------------------------------------------------------------
def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return result.returncode == 0


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nobody can write to: chmod for normal users, a read-only tmpfs for root (who ignores modes)."""
    folder = tmp_path / "readonly"
    if os.geteuid() != 0:
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if not _mount_tmpfs(folder, "ro,size=1m"):
        pytest.skip("running as root without permission to mount a read-only tmpfs")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.parametrize(
    "command",
    [
        ["train-teacher", "{features}", "--view", "global", "--out", "{out}", *TINY],
        [
            "extract",
            "boxes",
            "{dataset}",
            "--out",
            "{out}.h5",
            "--source",
            "dataset",
            "--frames",
            "2",
            "--workers",
            "0",
        ],
        ["prepare", "synthetic", "--out", "{out}", "--videos-per-class", "1"],
        ["cache", "merge", "{features}", "--out", "{out}.h5"],
    ],
)
def test_read_only_output_is_one_line(features, dataset, read_only_folder, command, capsys):
    out = read_only_folder / "out"
    argv = [part.format(features=features, dataset=dataset, out=out) for part in command]
    before = snapshot(dataset, features.parent)
    code, _, err = run_cli_raw(argv, capsys)
    assert_one_line_error(code, err, 2, str(read_only_folder))
    assert snapshot(dataset, features.parent) == before
    assert list(read_only_folder.iterdir()) == []


@pytest.fixture
def tiny_disk(tmp_path):
    """A 192 KiB file system (root only: a real ENOSPC, not a simulated one)."""
    folder = tmp_path / "tiny"
    if not _mount_tmpfs(folder, "size=192k"):
        pytest.skip("a full disk is simulated with a small tmpfs, which needs root and mount")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_disk_full_in_training_is_one_line_and_resumable(features, tiny_disk, tmp_path, capsys):
    out = tiny_disk / "run"
    code, _, err = run_cli_raw(
        ["train-teacher", features, "--view", "global", "--out", out, *TINY, "--set", "model.hidden=256"], capsys
    )
    assert_one_line_error(code, err, 1, "space")
    assert "resume" in err or "again" in err
