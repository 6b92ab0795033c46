"""Run directories are hoitool's own: markers, --force/--resume refusals, auto-resume, the writer lock,
checks before anything is written, a full disk, and checkpoints that load as data (issue 6)."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli, run_cli_raw
from test_train import make_features, request, state_dicts_equal

from hoitool import runs
from hoitool.datasets.common import run_prepare
from hoitool.datasets.folder import prepare_folder
from hoitool.errors import HoitoolError, Interrupted, UsageError
from hoitool.train import fit
from hoitool.train.loop import train

TINY = [
    "--epochs",
    "3",
    "--batch-size",
    "4",
    "--device",
    "cpu",
    "--workers",
    "0",
    "--lr",
    "0.01",
    "--set",
    "model.hidden=16",
    "--set",
    "model.heads=2",
]


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and folder under ``roots`` with the sha256 of its bytes ('dir' for folders)."""
    state = {}
    for root in roots:
        for path in sorted([root, *root.rglob("*")]):
            state[str(path)] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def one_error_line(err: str) -> str:
    """The single ``error:`` line a refused command prints (and nothing like a traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len([line for line in lines if line.startswith("error:")]) == 1 and lines[-1].startswith("error:"), err
    return lines[-1]


def metrics(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("time")
    return records


def stop_after(epoch_to_stop: int):
    def hook(epoch, record):
        if epoch == epoch_to_stop:
            raise Interrupted("interrupted by SIGTERM; finished videos and checkpoints are kept")

    return hook


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A features store, a finished teacher, a prepared dataset folder and a folder of someone's files."""
    root = tmp_path_factory.mktemp("safety")
    features = make_features(root, split_sizes={"train": 4, "val": 2, "test": 2})
    teacher = root / "teacher"
    train(request(features, teacher, train__epochs=1))
    raw = root / "raw"
    for label in ("jump", "run"):
        (raw / label).mkdir(parents=True)
        for number in range(3):
            (raw / label / f"{label}{number}.mp4").write_bytes(b"not really a video")
    dataset = root / "dataset"
    run_prepare(
        "folder", dataset, {"root": str(raw)}, False, lambda out: prepare_folder(raw, out)
    )  # as `prepare folder`
    return {"root": root, "features": features, "teacher": teacher, "dataset": dataset, "raw": raw}


def foreign_folder(parent: Path) -> Path:
    folder = parent / "thesis"
    (folder / "figures").mkdir(parents=True)
    (folder / "thesis.tex").write_text("\\section{Results}\n")
    (folder / "figures" / "plot.pdf").write_bytes(b"%PDF-1.4")
    (folder / "config.resolved.yaml").write_text("mine: true\n")  # what the old is_run_dir() took for a run
    return folder


COMMANDS = {
    "teacher": lambda w, out: ["train-teacher", w["features"], "--view", "global", "--out", out],
    "student": lambda w, out: ["distill", w["features"], "--view", "local", "--teacher", w["teacher"], "--out", out],
    "dml": lambda w, out: ["distill", w["features"], "--view", "local", "--dml", "--out", out],
}


# -- ownership: --force and --resume never touch a folder hoitool did not create --------------------------------------
@pytest.mark.parametrize("flag", ["--force", "--resume", None])
@pytest.mark.parametrize("kind", ["teacher", "student", "dml"])
@pytest.mark.parametrize("target", ["dataset", "foreign"])
def test_force_and_resume_never_touch_a_folder_that_is_not_a_run(world, tmp_path, capsys, target, kind, flag):
    folder = world["dataset"] if target == "dataset" else foreign_folder(tmp_path)
    before = snapshot(folder, world["teacher"])
    argv = COMMANDS[kind](world, folder) + TINY + ([flag] if flag else [])
    code, _, err = run_cli_raw(argv, capsys)
    line = one_error_line(err)
    assert code == 2 and str(folder) in line and "refusing" in line
    assert ("prepared dataset" in line) if target == "dataset" else ("not a hoitool run directory" in line)
    assert snapshot(folder, world["teacher"]) == before


def test_a_run_of_another_kind_is_refused(world, capsys):
    teacher = world["teacher"]
    before = snapshot(teacher)
    for flag in ("--force", "--resume"):
        code, _, err = run_cli_raw(COMMANDS["student"](world, teacher) + TINY + [flag], capsys)
        line = one_error_line(err)
        assert code == 2 and "holds a teacher run, not a student run" in line
    assert snapshot(teacher) == before


def test_force_deletes_only_hoitool_files_of_the_run(world, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(COMMANDS["teacher"](world, out) + TINY, capsys)
    assert code == 0, err
    code, _, err = run_cli(["eval", out], capsys)
    assert code == 0 and any((out / "eval").iterdir()), err
    (out / "notes.txt").write_text("my notes")
    (out / "checkpoints" / "keep.me").write_text("mine")
    (out / "eval" / "my-plot.svg").write_text("<svg/>")
    code, _, err = run_cli(COMMANDS["teacher"](world, out) + TINY + ["--force", "--epochs", "1"], capsys)
    assert code == 0, err
    assert "kept 3 file(s) hoitool did not write" in err
    assert (out / "notes.txt").read_text() == "my notes" and (out / "checkpoints" / "keep.me").read_text() == "mine"
    assert (out / "eval" / "my-plot.svg").exists() and not list((out / "eval").glob("metrics_*.json"))
    assert [record["epoch"] for record in metrics(out)] == [1]


def test_run_json_is_hoitool_marker_of_every_member(world, tmp_path):
    out = tmp_path / "dml"
    train(request(world["features"], out, kind="dml", view="local", train__epochs=1))
    for run_dir in (out, out / "peer"):
        assert runs.run_marker(run_dir)["format"] == "hoitool.run/1"
        assert runs.run_marker(run_dir)["kind"] == "dml"


def test_the_marker_is_the_first_file_of_a_run(world, tmp_path, monkeypatch):
    written = []
    original = runs.write_json

    def spy(path, obj):
        written.append((Path(path).name, sorted(p.name for p in Path(path).parent.iterdir())))
        original(path, obj)

    monkeypatch.setattr(runs, "write_json", spy)
    train(request(world["features"], tmp_path / "run", train__epochs=1))
    assert written[0] == ("run.json", [runs.LOCK_FILE])


# -- checks before anything is written ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind, args, key",
    [
        ("teacher", ["--lr", "-1"], "optim.lr"),
        ("teacher", ["--lr", "0"], "optim.lr"),
        ("teacher", ["--set", "optim.lr=abc"], "optim.lr"),
        ("teacher", ["--set", "optim.weight_decay=-1"], "optim.weight_decay"),
        ("teacher", ["--set", "optim.momentum=1"], "optim.momentum"),
        ("teacher", ["--set", "schedule.gamma=0"], "schedule.gamma"),
        ("teacher", ["--epochs", "0"], "train.epochs"),
        ("teacher", ["--batch-size", "0"], "train.batch_size"),
        ("teacher", ["--workers", "-1"], "data.workers"),
        ("teacher", ["--set", "data.preload=sometimes"], "data.preload"),
        ("teacher", ["--set", "model.layers=7"], "model.layers"),
        ("student", ["--generalized", "1.5"], "--generalized"),
        ("student", ["--generalized", "-0.1"], "--generalized"),
        ("student", ["--lambda1", "-1"], "distill.lambda1"),
        ("student", ["--lambda2", "-0.5"], "distill.lambda2"),
        ("student", ["--lambda1", "0", "--lambda2", "0"], "both 0"),
        ("student", ["--T", "0"], "distill.T"),
    ],
)
def test_invalid_options_are_refused_before_anything_is_written(world, tmp_path, capsys, kind, args, key):
    out = tmp_path / "run"
    code, _, err = run_cli_raw(COMMANDS[kind](world, out) + TINY + args, capsys)
    line = one_error_line(err)
    assert code == 2 and key in line
    assert not out.exists()


def test_the_corrected_command_then_runs(world, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, _ = run_cli(COMMANDS["teacher"](world, out) + TINY + ["--lr", "-1"], capsys)
    assert code == 2 and not out.exists()
    code, _, err = run_cli(COMMANDS["teacher"](world, out) + TINY, capsys)
    assert code == 0, err


def test_unfinished_teacher_is_one_line_and_writes_nothing(world, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    with pytest.raises(Interrupted):
        train(request(world["features"], teacher, train__epochs=3), on_epoch_end=stop_after(1))
    out = tmp_path / "student"
    code, _, err = run_cli_raw(
        ["distill", world["features"], "--view", "local", "--teacher", teacher, "--out", out] + TINY, capsys
    )
    line = one_error_line(err)
    assert code == 2 and "teacher run is not finished" in line and str(teacher) in line
    assert not out.exists()
    with pytest.raises(UsageError, match="not finished"):
        train(request(world["features"], out, kind="student", view="local", teacher=teacher))
    assert not out.exists()


def test_stale_teacher_is_refused_before_the_run_directory_exists(world, tmp_path):
    other = make_features(tmp_path, seed=3, name="other", split_sizes={"train": 4, "val": 2, "test": 2})
    out = tmp_path / "student"
    with pytest.raises(Exception, match="stale teacher outputs"):
        train(request(other, out, kind="student", view="local", teacher=world["teacher"]))
    assert not out.exists()


# -- resume: the same command again resumes; never an epoch twice --------------------------------------------------------
def test_the_same_command_again_resumes_bit_identically(world, tmp_path):
    features = world["features"]
    settings = dict(train__epochs=3, model__dropout=0.2, optim__name="sgd", optim__lr=0.05)
    train(request(features, tmp_path / "straight", **settings))
    with pytest.raises(
        Interrupted, match=r"interrupted by SIGTERM; .*last.pt holds epoch 1/3; run the same command again to resume"
    ):
        train(request(features, tmp_path / "run", **settings), on_epoch_end=stop_after(1))
    result = train(request(features, tmp_path / "run", **settings))  # no --resume
    assert result.trained_epochs == 2
    assert metrics(tmp_path / "run") == metrics(tmp_path / "straight")
    a = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    assert state_dicts_equal(a["members"]["main"]["model"], b["members"]["main"]["model"])
    again = train(request(features, tmp_path / "run", **settings))
    assert again.already_finished


def test_a_different_config_is_still_refused_unless_forced(world, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, _ = run_cli(COMMANDS["teacher"](world, out) + TINY, capsys)
    assert code == 0
    before = snapshot(out)
    code, _, err = run_cli_raw(COMMANDS["teacher"](world, out) + TINY + ["--lr", "0.02"], capsys)
    line = one_error_line(err)
    assert code == 2 and "different config (optim.lr: 0.01 -> 0.02)" in line and "--force" in line
    assert snapshot(out) == before
    code, _, err = run_cli(COMMANDS["teacher"](world, out) + TINY + ["--lr", "0.02", "--force"], capsys)
    assert code == 0 and metrics(out)[0]["lr"] == 0.02


def _fail_last_checkpoint_at(monkeypatch, epoch_to_fail: int) -> None:
    """``last.pt`` of one epoch fails as on a full disk (after that epoch's metrics line and best.pt were written)."""
    original = fit.save_checkpoint  # last.pt is written by the epoch loop (hoitool.train.fit)

    def save(path, state):
        if Path(path).name == "last.pt" and state["epoch"] == epoch_to_fail:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        original(path, state)

    monkeypatch.setattr(fit, "save_checkpoint", save)


@pytest.mark.parametrize("epoch_to_fail, kept", [(1, "no checkpoint yet"), (2, "last.pt holds epoch 1/3")])
@pytest.mark.parametrize("again", [[], ["--resume"]])
def test_disk_full_is_one_line_and_the_rerun_logs_each_epoch_once(
    world, tmp_path, capsys, monkeypatch, epoch_to_fail, kept, again
):
    straight = tmp_path / "straight"
    assert run_cli(COMMANDS["teacher"](world, straight) + TINY, capsys)[0] == 0
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _fail_last_checkpoint_at(patch, epoch_to_fail)
        code, _, err = run_cli_raw(COMMANDS["teacher"](world, out) + TINY, capsys)
    line = one_error_line(err)
    assert code == 1 and "no space left" in line and kept in line and "run the same command again to resume" in line
    code, _, err = run_cli(COMMANDS["teacher"](world, out) + TINY + again, capsys)
    assert code == 0, err
    assert [record["epoch"] for record in metrics(out)] == [1, 2, 3]
    assert metrics(out) == metrics(straight)


# -- one writer per run directory ---------------------------------------------------------------------------------------
def test_a_second_writer_is_refused_and_a_released_lock_never_blocks(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runs, "LOCK_GRACE_S", 0.2)
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(request(world["features"], out, train__epochs=2), on_epoch_end=stop_after(1))
    held = runs.lock_run_dir(out)  # as if another process were training into it
    try:
        before = snapshot(out)
        for flag in ([], ["--resume"], ["--force"]):
            code, _, err = run_cli_raw(COMMANDS["teacher"](world, out) + TINY + flag, capsys)
            assert code == 2 and "another hoitool process is training into this run directory" in one_error_line(err)
        assert snapshot(out) == before
    finally:
        held.close()
    assert train(request(world["features"], out, train__epochs=2, resume=True)).trained_epochs == 1


# -- checkpoints are data ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["teacher", "student", "dml"])
def test_every_checkpoint_loads_with_weights_only(world, tmp_path, kind):
    out = tmp_path / kind
    teacher = world["teacher"] if kind == "student" else None
    train(
        request(world["features"], out, kind=kind, view="local", teacher=teacher, train__epochs=1, model__dropout=0.1)
    )
    paths = list(out.rglob("*.pt"))
    assert len(paths) == (3 if kind == "dml" else 2)
    for path in paths:
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert state["format"] == "hoitool.checkpoint/2"


def test_a_checkpoint_that_needs_pickle_is_refused(world, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(request(world["features"], out, train__epochs=2), on_epoch_end=stop_after(1))
    last = out / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    state["sneaky"] = np.random.get_state()  # a numpy array: unpickling it needs numpy's reconstructor (code)
    torch.save(state, last)
    with pytest.raises(HoitoolError, match="needs pickle to load"):
        train(request(world["features"], out, train__epochs=2, resume=True))


# -- kill -9 of the main process alone: workers die with it, the same command resumes at once ---------------------------
def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # fields: state, ppid, ...
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_kill_9_of_the_main_process_leaves_no_worker_and_the_rerun_is_identical(tmp_path, capsys):
    import os
    import signal
    import subprocess
    import sys
    import time

    features = make_features(tmp_path, split_sizes={"train": 48, "val": 4, "test": 4})
    argv = [
        "train-teacher",
        str(features),
        "--view",
        "global",
        "--device",
        "cpu",
        "--workers",
        "2",
        "--epochs",
        "6",
        "--batch-size",
        "2",
        "--lr",
        "0.01",
        "--set",
        "data.preload=false",
        "--set",
        "model.hidden=16",
        "--set",
        "model.heads=2",
        "--set",
        "model.dropout=0.2",
    ]
    assert run_cli(argv + ["--out", tmp_path / "straight"], capsys)[0] == 0
    out = tmp_path / "killed"
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "hoitool", *argv, "--out", str(out)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    while time.monotonic() < deadline and process.poll() is None:
        workers = _children(process.pid)
        if len(workers) >= 2 and (out / "checkpoints" / "last.pt").exists():  # mid-run, workers reading the store
            break
        time.sleep(0.05)
    assert process.poll() is None and len(workers) >= 2, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)  # the main process only, as the OOM killer or `kill -9 PID` does
    process.wait()
    deadline = time.monotonic() + 3  # PR_SET_PDEATHSIG is immediate; torch's own watchdog would take 5 s or more
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers), "DataLoader workers outlived their parent"
    code, _, err = run_cli(argv + ["--out", out], capsys)  # at once, the same command
    assert code == 0 and "resuming after epoch" in err, err
    assert metrics(out) == metrics(tmp_path / "straight")
    a = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["members"]["main"]["model"]
    b = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)["members"]["main"]["model"]
    assert state_dicts_equal(a, b)


def test_a_released_run_lock_is_free_while_a_forked_worker_still_lives(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "LOCK_GRACE_S", 0.2)
    import os
    import time

    from hoitool.io.lock import release

    held = runs.lock_run_dir(tmp_path / "run")
    child = os.fork()  # shares the lock's open file, as a DataLoader worker does
    if child == 0:
        time.sleep(2)
        os._exit(0)
    try:
        with pytest.raises(UsageError, match="another hoitool process"):
            runs.lock_run_dir(tmp_path / "run")
        release(held)
        release(runs.lock_run_dir(tmp_path / "run"))  # free although the child still shares it
    finally:
        os.waitpid(child, 0)


def test_a_run_killed_while_writing_its_first_file_is_not_blocked(world, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / runs.LOCK_FILE).write_text("")
    (out / ".run.json.k3j4.tmp").write_text('{"form')  # torn atomic write of the marker
    assert runs.inspect_run_dir(out, "teacher") == "empty"
    assert train(request(world["features"], out, train__epochs=1)).trained_epochs == 1
