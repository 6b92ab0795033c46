"""``hoitool prepare ...`` as a user runs it: exit codes, one-line errors, re-runs and --force."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_prepare import charades_row, write_cad120_root, write_charades_root

from hoitool.datasets.common import run_prepare
from hoitool.datasets.folder import prepare_folder
from hoitool.errors import UsageError


def prepare(dataset: str, out: str | Path, *args: str | Path) -> subprocess.CompletedProcess:
    """``hoitool prepare DATASET --out OUT ARGS...`` in a fresh process."""
    argv = ["prepare", dataset, "--out", out, *args]
    return subprocess.run(
        [sys.executable, "-m", "hoitool", *map(str, argv)], capture_output=True, text=True, timeout=120
    )


def class_folders(root: Path) -> Path:
    for label in ("jump", "run"):
        (root / label).mkdir(parents=True)
        for i in range(5):
            (root / label / f"{label}{i}.mp4").write_bytes(b"")
    return root


def test_folder_rerun_is_a_noop_and_a_changed_config_needs_force(tmp_path):
    root, out = class_folders(tmp_path / "raw"), tmp_path / "out"
    first = prepare("folder", out, "--root", root)
    assert first.returncode == 0, first.stderr
    assert "train videos" in first.stdout and "classes" in first.stdout
    assert yaml.safe_load((out / "config.resolved.yaml").read_text())["root"] == str(root)
    assert json.loads((out / "manifest.json").read_text())["dataset"] == "folder"

    again = prepare("folder", out, "--root", root)
    assert again.returncode == 0 and "nothing to do" in again.stderr

    changed = prepare("folder", out, "--root", root, "--seed", "1")
    assert changed.returncode == 2
    assert changed.stderr.strip().splitlines() == [
        f"error: {out / 'manifest.json'}: refusing to overwrite the prepared dataset: "
        "it was made with a different config (seed changed); use --force to overwrite or pick another OUT"
    ]
    forced = prepare("folder", out, "--root", root, "--seed", "1", "--force")
    assert forced.returncode == 0, forced.stderr
    assert yaml.safe_load((out / "config.resolved.yaml").read_text())["seed"] == 1


def test_run_prepare_builds_only_when_needed(tmp_path):
    root, out = class_folders(tmp_path / "raw"), tmp_path / "out"
    builds = []

    def build(out):
        builds.append(out)
        return prepare_folder(root, out)

    config = {"root": str(root), "seed": 0}
    run_prepare("folder", out, config, False, build)
    run_prepare("folder", out, config, False, build)  # same config: no-op
    assert len(builds) == 1
    run_prepare("folder", out, config, True, build)  # --force redoes it
    assert len(builds) == 2
    with pytest.raises(UsageError, match="dataset 'folder', not 'ssv2'"):
        run_prepare("ssv2", out, config, False, build)
    (out / "config.resolved.yaml").unlink()
    with pytest.raises(UsageError, match="unknown config"):
        run_prepare("folder", out, config, False, build)


def test_bad_labels_csv_is_a_one_line_usage_error(tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    labels = tmp_path / "labels.csv"
    labels.write_text("a,jump\nb,run,extra\n")
    result = prepare("folder", tmp_path / "out", "--root", root, "--labels", labels)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {labels}:2: expected 2 fields `id,label` (or `id,label1;label2`), got 3"
    ]
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_bad_charades_csv_is_a_one_line_usage_error(tmp_path):
    root = write_charades_root(tmp_path / "raw", [charades_row("V1", "S", "c001 zero 1")], [], num_classes=3)
    result = prepare("charades", tmp_path / "out", "--root", root)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Charades_v1_train.csv:2: bad action 'c001 zero 1'" in lines[0]


def test_print_config_and_config_errors(tmp_path):
    out = tmp_path / "out"
    shown = prepare("charades", out, "--root", tmp_path, "--set", "val_fraction=0.3", "--print-config")
    assert shown.returncode == 0
    assert yaml.safe_load(shown.stdout)["val_fraction"] == 0.3
    assert not out.exists()
    unknown = prepare("charades", out, "--root", tmp_path, "--set", "val_fractoin=0.3")
    assert unknown.returncode == 2 and "unknown config key 'val_fractoin'" in unknown.stderr
    no_root = prepare("ssv2", out)
    assert no_root.returncode == 2 and "--root" in no_root.stderr


def test_out_is_an_option_and_the_old_positional_form_says_so(tmp_path, capsys):
    """One grammar: every stage takes --out; a positional OUT is one line (exit 2) naming the form to use."""
    from helpers import run_cli_raw

    root, out = class_folders(tmp_path / "raw"), tmp_path / "out"
    code, _, err = run_cli_raw(["prepare", "folder", out, "--root", root], capsys)
    assert code == 2 and err.strip() == (
        f"error: prepare folder takes its output as an option now: hoitool prepare folder --out {out}"
    )
    code, _, err = run_cli_raw(["prepare", "folder", "--root", root], capsys)
    assert code == 2 and err.strip() == "error: prepare folder: missing --out OUT (the folder to write the manifest to)"
    assert not out.exists()
    code, _, err = run_cli_raw(["prepare", "folder", "-o", out, "--root", root], capsys)
    assert code == 0 and (out / "manifest.json").is_file(), err


def test_charades_frame_folders_are_from_frames_and_frames_is_a_count_everywhere(tmp_path, capsys):
    """`--frames` is a number on every command; Charades reads frame folders with --from-frames (from_frames)."""
    import typer
    from helpers import run_cli_raw

    from hoitool.cli.app import app

    root = write_charades_root(tmp_path / "raw", [charades_row("V1", "S", "c001 0.0 1.0")], [], num_classes=3)
    out = tmp_path / "out"
    code, shown, err = run_cli_raw(
        ["prepare", "charades", "-o", out, "--root", root, "--from-frames", "--print-config"], capsys
    )
    assert code == 0, err
    assert yaml.safe_load(shown)["from_frames"] is True and "frames" not in yaml.safe_load(shown)
    code, _, err = run_cli_raw(["prepare", "charades", "-o", out, "--root", root, "--frames"], capsys)
    assert code == 2 and "No such option: --frames" in err and not out.exists()
    root_command = typer.main.get_command(app)
    commands = [root_command.commands["prepare"].commands[name] for name in ("synthetic", "charades")]
    commands.append(root_command.commands["extract"].commands["boxes"])
    for command in commands:
        for param in command.params:
            if "--frames" in param.opts:
                assert param.bare_type() == "int" and not param.is_flag, f"{command.name}: --frames is not a count"


def test_cad120_fold_from_the_command_line(tmp_path):
    root, out = write_cad120_root(tmp_path / "raw"), tmp_path / "out"
    result = prepare("cad120", out, "--root", root, "--fold", "Subject1", "--val", "0.5")
    assert result.returncode == 0, result.stderr
    assert "annotations.jsonl" in result.stdout and "1 video(s) skipped" in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert {v["id"] for v in manifest["videos"] if v["split"] == "test"} == {"0510175411", "0510175412"}
    assert yaml.safe_load((out / "config.resolved.yaml").read_text())["val"] == 0.5


def test_synthetic_command(tmp_path):
    pytest.importorskip("hoitool.datasets.synthetic", reason="the synthetic generator is not in this checkout yet")
    out = tmp_path / "synthetic"
    result = prepare("synthetic", out, "--videos-per-class", "1", "--frames", "4", "--size", "32")
    assert result.returncode == 0, result.stderr
    assert (out / "manifest.json").is_file() and "train videos" in result.stdout
    assert yaml.safe_load((out / "config.resolved.yaml").read_text())["frames"] == 4


def _snapshot(root: Path) -> dict[str, bytes | str]:
    return {
        str(path.relative_to(root)): "dir" if path.is_dir() else path.read_bytes() for path in sorted(root.rglob("*"))
    }


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


@pytest.mark.parametrize("force", [False, True])
def test_prepare_never_writes_into_a_folder_of_foreign_files(tmp_path, force):
    root = class_folders(tmp_path / "raw")
    out = tmp_path / "mine"
    (out / "videos").mkdir(parents=True)
    (out / "videos" / "clip.mp4").write_bytes(b"my own video")
    (out / "annotations.jsonl").write_text('{"mine": true}\n')  # a name hoitool would write
    (out / "notes.txt").write_text("do not touch")
    before = _snapshot(out)
    result = prepare("folder", out, "--root", root, *(["--force"] if force else []))
    assert result.returncode == 2
    line = _one_error_line(result.stderr)
    assert str(out) in line and "not prepared by hoitool" in line and "refusing" in line
    assert _snapshot(out) == before


def test_prepare_force_on_a_manifest_hoitool_did_not_mark_is_refused(tmp_path):
    """A folder with a manifest.json but no marker (written by hand, or by an older hoitool) is not replaced."""
    root = class_folders(tmp_path / "raw")
    out = tmp_path / "dataset"
    run_prepare("folder", out, {"root": str(root), "seed": 0}, False, lambda out: prepare_folder(root, out))
    (out / ".hoitool-dataset.json").unlink()
    before = _snapshot(out)
    result = prepare("folder", out, "--root", root, "--seed", "3", "--force")
    assert result.returncode == 2 and "manifest.json but no hoitool marker" in _one_error_line(result.stderr)
    assert _snapshot(out) == before


def test_prepare_force_replaces_only_hoitool_files(tmp_path):
    root = class_folders(tmp_path / "raw")
    out = tmp_path / "out"
    assert prepare("folder", out, "--root", root).returncode == 0
    marker = json.loads((out / ".hoitool-dataset.json").read_text())
    assert marker == {"format": "hoitool.dataset/1", "dataset": "folder"}
    (out / "my_notes.txt").write_text("kept")
    (out / "extra").mkdir()
    (out / "extra" / "clip.mp4").write_bytes(b"user video")
    forced = prepare("folder", out, "--root", root, "--seed", "1", "--force")
    assert forced.returncode == 0, forced.stderr
    assert (out / "my_notes.txt").read_text() == "kept" and (out / "extra" / "clip.mp4").read_bytes() == b"user video"
    assert yaml.safe_load((out / "config.resolved.yaml").read_text())["seed"] == 1
    assert sorted(path.name for path in out.iterdir()) == [
        ".hoitool-dataset.json",
        "config.resolved.yaml",
        "extra",
        "manifest.json",
        "my_notes.txt",
    ]


def test_prepare_into_a_run_directory_is_refused(tmp_path):
    root = class_folders(tmp_path / "raw")
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"format": "hoitool.run/1", "kind": "teacher"}))
    result = prepare("folder", out, "--root", root, "--force")
    assert result.returncode == 2 and "not prepared by hoitool" in _one_error_line(result.stderr)
    assert sorted(path.name for path in out.iterdir()) == ["run.json"]


def test_the_dataset_marker_exists_before_the_preparer_writes_anything(tmp_path):
    root, out = class_folders(tmp_path / "raw"), tmp_path / "out"
    seen = []

    def build(out):
        seen.append(sorted(path.name for path in out.iterdir()))
        return prepare_folder(root, out)

    run_prepare("folder", out, {"root": str(root)}, False, build)
    assert seen == [[".hoitool-dataset.json", "config.resolved.yaml"]]  # claimed (marker and config) before any data
    assert (out / ".hoitool-dataset.json").stat().st_mtime_ns <= (out / "config.resolved.yaml").stat().st_mtime_ns
