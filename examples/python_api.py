"""hoitool from Python: every stage as a library function with a typed config (docs/python-api.md).

Runs on the built-in synthetic set in a temporary folder (or the folder given as the first argument):
prepare -> extract boxes -> extract features -> train a teacher -> evaluate, then reads the artifacts back.
"""

import logging
import sys
import tempfile
from pathlib import Path

from torch.utils.data import DataLoader

from hoitool.datasets.synthetic import generate
from hoitool.eval.evaluate import evaluate_runs
from hoitool.extract.boxes import extract_boxes
from hoitool.extract.features import extract_features
from hoitool.runs import load_run
from hoitool.settings.boxes import BoxesSettings
from hoitool.settings.features import FeaturesSettings
from hoitool.settings.training import TeacherSettings
from hoitool.store import open_store
from hoitool.train.data import collate, features_dataset
from hoitool.train.loop import TrainRequest, train


def main(root: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # hoitool reports through logging
    data = root / "data"
    generate(data, videos_per_class=2, num_frames=8, size=64, seed=0)  # what `hoitool prepare synthetic` renders

    boxes = BoxesSettings(source="dataset", frames=4, top_k=3, runtime={"workers": 0})
    extract_boxes(data / "manifest.json", root / "boxes.h5", boxes)
    features = FeaturesSettings(
        backbone={"arch": "resnet18", "weights": "random"},
        mode="crop",
        crop_size=32,
        runtime={"device": "cpu", "workers": 0},
    )
    extract_features(root / "boxes.h5", root / "features.h5", features)

    # Read a store: one video's arrays, as numpy.
    store = open_store(root / "features.h5")
    video = store.video_ids[0]
    arrays = store.read(video)
    print(f"{video}: nodes {arrays['nodes'].shape} {arrays['nodes'].dtype}, valid {arrays['valid'].shape}")

    # A torch Dataset over a split of the store, batched by hoitool's collate.
    loader = DataLoader(features_dataset(root / "features.h5", "train"), batch_size=4, collate_fn=collate)
    batch = next(iter(loader))
    print("batch:", {name: tuple(value.shape) for name, value in batch.items() if hasattr(value, "shape")})

    # Train a teacher with a typed config, then evaluate its run directory.
    config = TeacherSettings(
        model={"view": "global", "hidden": 16, "heads": 1},
        train={"epochs": 2, "batch_size": 4},
        data={"workers": 0},
        runtime={"device": "cpu"},
    )
    train(TrainRequest("teacher", root / "features.h5", root / "runs" / "global", config.model_dump()))
    run = load_run(root / "runs" / "global")
    record = evaluate_runs([run], split="test")
    print(f"test accuracy {record['metrics']['accuracy']:.3f} over {record['counts']['videos']} videos")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as folder:
            main(Path(folder))
