"""examples/ as written: the paper's configs agree with the presets, and every recipe script runs on tiny data.

The scripts run unchanged under bash; only their environment variables point them at tiny
stand-in data (test_cad120_layout's CAD-120 in the publisher's layout, a tiny Charades
release with real mp4s) and add tiny-model options (ResNet-18 or a small RPN, random
weights, 1-2 epochs). Each ``hoitool`` they call is a real CLI process, forked from one
server that imported hoitool and torch once (the shim ``hoitool`` on PATH hands it argv,
cwd, environment and its stdin/stdout/stderr), so the test pays torch's import once,
not once per command; torchrun's ranks come through the same shim.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hoitool.config import load_config_file
from hoitool.train.presets import apply_preset, resolve_training_config, training_defaults

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
RECIPES = {  # dataset -> (preset, teacher view of its student.yaml)
    "cad120": ("cad120", "global"),
    "charades": ("charades-i3d", "local"),
}


@pytest.mark.parametrize("dataset", sorted(RECIPES))
def test_config_files_are_the_presets(dataset):
    """teacher.yaml / student.yaml resolve to exactly what --preset gives (student: for its teacher view)."""
    preset, teacher_view = RECIPES[dataset]
    for name, distill in (("teacher", False), ("student", True)):
        path = EXAMPLES / dataset / f"{name}.yaml"
        assert "preset" not in load_config_file(path)  # the values themselves, readable without the code
        mine = resolve_training_config(distill, None, path, teacher_view=teacher_view)
        expected = apply_preset(training_defaults(distill), preset, teacher_view)
        expected.pop("preset")
        mine.pop("preset")
        assert mine == expected, f"{path} differs from --preset {preset}"


# -- one process imports hoitool and torch; each `hoitool` of a script is a fork of it ---------------------------
SERVER = """
import json, os, socket, sys, threading, traceback
import torch
torch.set_num_threads(1)
from hoitool.cli.app import main
import hoitool.extract.boxes, hoitool.extract.features, hoitool.train.loop, hoitool.eval.evaluate, hoitool.eval.plots
import h5py, av, PIL.ImageDraw, torchvision.models.detection, matplotlib.backends.backend_pdf, matplotlib.backends.backend_svg
model = torch.nn.Linear(2, 2)  # the first optimizer step imports torch's lazy parts (dynamo, sympy): once, here
optimizer = torch.optim.Adam(model.parameters())
model(torch.zeros(1, 2)).sum().backward()
optimizer.step()
server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
server.bind(sys.argv[1])
server.listen(8)
print("ready", flush=True)

def reply(conn, pid):
    status = os.waitpid(pid, 0)[1]
    conn.send(str(os.waitstatus_to_exitcode(status)).encode())
    conn.close()

while True:
    conn, _ = server.accept()
    message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    request = json.loads(message)
    pid = os.fork()
    if pid == 0:
        server.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        code = 1
        try:
            main(request["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        except BaseException:
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    for fd in fds:
        os.close(fd)
    threading.Thread(target=reply, args=(conn, pid), daemon=True).start()
"""
SHIM = """#!{python} -S
import json, os, socket, sys
client = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
client.connect({socket!r})
request = {{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}
socket.send_fds(client, [json.dumps(request).encode()], [0, 1, 2])
sys.exit(int(client.recv(16) or b"1"))
"""


@pytest.fixture(scope="module")
def hoitool_path(tmp_path_factory):
    """A PATH whose ``hoitool`` is the shim of a forking server (torch imported once)."""
    base = tmp_path_factory.mktemp("shim")
    address = str(base / "hoitool.sock")
    server = subprocess.Popen([sys.executable, "-c", SERVER, address], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert server.stdout.readline().strip() == "ready"
        shim = base / "bin" / "hoitool"
        shim.parent.mkdir()
        shim.write_text(SHIM.format(python=sys.executable, socket=address))
        shim.chmod(0o755)
        yield f"{shim.parent}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    finally:
        server.kill()
        server.wait()


def run_script(script: Path, path: str, env: dict, cwd: Path, *args) -> str:
    """Run a recipe under bash as a user would (its arguments, environment variables); its output, or the failure."""
    environment = {**os.environ, "PATH": path, "COLUMNS": "200", **{k: str(v) for k, v in env.items()}}
    command = ["bash", str(script), *map(str, args)]
    result = subprocess.run(command, env=environment, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"{script.name} exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


# -- tiny stand-in data --------------------------------------------------------------------------------------------
def tiny_charades(root: Path) -> Path:
    """The Charades release layout: class list, train/test CSVs, real (tiny) mp4s in Charades_v1_480/."""
    from test_prepare import charades_row, write_charades_root

    from hoitool.datasets.synthetic import choose_codec, encode_video

    videos = {  # id -> (subject, actions, split); 4 classes so every class has a positive test video
        "TR001": ("s1", "c000 0.0 2.0;c001 0.5 1.5", "train"),
        "TR002": ("s1", "c002 0.0 2.0", "train"),
        "TR003": ("s2", "c003 0.0 1.0", "train"),
        "TR004": ("s3", "c001 0.0 2.0", "train"),
        "TE001": ("s4", "c000 0.0 2.0;c002 1.0 2.0", "test"),
        "TE002": ("s5", "c001 0.0 1.0;c003 0.5 2.0", "test"),
    }
    rows = {
        split: [charades_row(v, s, a, "2.0") for v, (s, a, p) in videos.items() if p == split]
        for split in ("train", "test")
    }
    write_charades_root(root, rows["train"], rows["test"], num_classes=4)
    rng, codec = np.random.default_rng(0), choose_codec()
    for video in videos:
        frames = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(8)]
        encode_video(root / "Charades_v1_480" / f"{video}.mp4", frames, 4, codec)
    return root


TINY_TRAIN = "--epochs 2 --batch-size 4 --workers 0 --device cpu --set model.hidden=16 --set model.layers=1"
TINY_FEATURES = "--backbone resnet18 --weights random --set crop_size=32 --set short_side=64 --workers 0 --device cpu"


@pytest.mark.slow
def test_recipes_run_unchanged_on_tiny_data(hoitool_path, tmp_path):
    from test_cad120_layout import write_cad120
    from test_crossval import SUBJECTS

    # CAD-120: one fold stage by stage, then cross-validation of one more fold on the same store.
    cad = tmp_path / "cad"
    env = {
        "RAW": write_cad120(tmp_path / "cad120-raw", frames=2, subjects=SUBJECTS),
        "OUT": cad,
        "VAL": 0.4,
        "FOLDS": "Subject3",
        "BOXES_ARGS": "--frames 2 --top-k 3",
        "FEATURES_ARGS": TINY_FEATURES,
        "TRAIN_ARGS": TINY_TRAIN,
    }
    output = run_script(EXAMPLES / "cad120" / "pipeline.sh", hoitool_path, env, tmp_path)
    assert "accuracy (top-1)" in output and "mean ± std" in output
    record = json.loads((cad / "crossval" / "crossval.json").read_text())
    assert [fold["fold"] for fold in record["folds"]] == ["Subject3"]
    student = json.loads((cad / "runs" / "Subject1" / "global-teacher" / "run.json").read_text())
    assert (student["view"], student["teacher_view"], student["distill"]["T"]) == ("local", "global", 10.0)

    # SLURM: the array's tasks by hand (two shards of the same features), then the merge: equal to one run.
    from hoitool.store import open_store

    sharded = tmp_path / "sharded" / "features.h5"
    sharded.parent.mkdir()
    env = {
        "BOXES": cad / "boxes.h5",
        "FEATURES": sharded,
        "SHARDS": 2,
        "CONFIG": EXAMPLES / "cad120" / "features.yaml",
        "FEATURES_ARGS": TINY_FEATURES,
    }
    for task in range(2):
        run_script(
            EXAMPLES / "slurm" / "extract_features.sbatch", hoitool_path, {**env, "SLURM_ARRAY_TASK_ID": task}, tmp_path
        )
    run_script(EXAMPLES / "slurm" / "merge_features.sh", hoitool_path, env, tmp_path)
    assert open_store(sharded).fingerprint == open_store(cad / "features.h5").fingerprint

    # torchrun: two ranks (gloo on CPU) train a teacher on the CAD-120 store.
    env = {
        "FEATURES": cad / "features.h5",
        "OUT": tmp_path / "ddp",
        "NPROC": 2,
        "VIEW": "global",
        "CONFIG": EXAMPLES / "cad120" / "teacher.yaml",
        "TRAIN_ARGS": TINY_TRAIN,
    }
    run_script(EXAMPLES / "torchrun.sh", hoitool_path, env, tmp_path)
    assert (tmp_path / "ddp" / "outputs.npz").is_file()

    # Charades: RPN boxes (a small resize, random weights), ResNet-18 RoI features, official mAP.
    charades = tmp_path / "charades"
    env = {
        "RAW": tiny_charades(tmp_path / "charades-raw"),
        "OUT": charades,
        "BOXES_ARGS": "--frames 2 --clips 2 --top-k 3 --weights random --device cpu --workers 0 "
        "--set model.min_size=64 --set model.max_size=96",
        "FEATURES_ARGS": f"{TINY_FEATURES} --crops 1",
        "TRAIN_ARGS": TINY_TRAIN,
    }
    output = run_script(EXAMPLES / "charades" / "pipeline.sh", hoitool_path, env, tmp_path)
    assert "mAP (official Charades)" in output
    metrics = json.loads((charades / "runs" / "local-teacher" / "eval" / "metrics_test.json").read_text())
    assert metrics["counts"]["videos"] == 2 and metrics["metrics"]["map_official"] is not None


@pytest.mark.slow
def test_synthetic_pipeline_and_sweep_run_unchanged(hoitool_path, tmp_path):
    """examples/pipeline.sh (the demo's stages for one seed), then examples/sweep.sh on its global teacher."""
    out = tmp_path / "synthetic"
    env = {
        "PREPARE_ARGS": "--videos-per-class 2 --frames 8 --size 64",
        "BOXES_ARGS": "--frames 4",
        "FEATURES_ARGS": "--set crop_size=32 --set short_side=64 --workers 0 --device cpu",
        "TRAIN_ARGS": TINY_TRAIN,
    }
    output = run_script(EXAMPLES / "pipeline.sh", hoitool_path, env, tmp_path, out)
    assert (out / "report" / "report.md").is_file() and "DML (local)" in (out / "report" / "report.md").read_text()
    env = {"TS": "4", "LAMBDAS": "0.5", "SEEDS": "0", "TRAIN_ARGS": TINY_TRAIN}
    args = (out / "features.zarr", out / "runs" / "global", "local", tmp_path / "sweep", "demo")
    run_script(EXAMPLES / "sweep.sh", hoitool_path, env, tmp_path, *args)
    run = json.loads((tmp_path / "sweep" / "T4-l0.5" / "seed0" / "run.json").read_text())
    assert run["distill"]["T"] == 4.0 and run["distill"]["lambda2"] == 0.5 and run["distill"]["lambda1"] == 0.5
    assert "accuracy" in output
