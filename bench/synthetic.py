"""Feature-level synthetic benchmark: do relations and distillation do anything? (prints tables; not a test)

Trains the real ``hoitool.nn.models.build_model`` views in the paper's
configuration (no time or geometry encodings, one GAT layer, one head, max
pooling) on :mod:`hoitool.datasets.synthetic_features` (the synthetic set's
class rules as node features, no video), over several seeds that vary the data
seed and the initialisation seed together, and prints

1. the main table: test accuracy per context (local / cross-frame / order) of
   baseline, local and global, with each view's ceiling by construction and
   percentile-bootstrap 95% intervals (over seeds, then test videos);
2. paired differences between the views on the same test videos and seeds,
   with bootstrap intervals;
3. with ``--distill``: global -> local and local -> global students on
   cross-fitted teacher logits (and extra unlabelled videos carrying only teacher
   targets) against their controls (matched label smoothing, self-distillation,
   shuffled teacher logits), as paired differences to the plain student.

    python bench/synthetic.py --quick            # smoke run, under a minute
    python bench/synthetic.py                    # main table (docs/synthetic-benchmark.md)
    python bench/synthetic.py --distill          # + distillation vs controls
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch

from hoitool.datasets.synthetic import CONTEXTS
from hoitool.datasets.synthetic_features import FeatureSet, context_means, generate_split, view_ceilings
from hoitool.losses import Objective
from hoitool.nn.models import build_model

VIEWS = ("baseline", "local", "global")


# -- statistics ------------------------------------------------------------------------------
def bootstrap_mean(
    values: np.ndarray, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of (S, V) per-seed, per-test-video values and its percentile-bootstrap interval.

    Two stages, so both sources of variation count: draw S seeds with
    replacement, then, within each drawn seed, V of its test videos with
    replacement; the statistic is the mean of the drawn values. A paired
    difference is this with ``values = score_a - score_b`` on the same videos.
    """
    values = np.asarray(values, np.float64)
    if values.ndim == 1:
        values = values[None]
    seeds, videos = values.shape
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 250):  # chunks bound the memory of the index arrays
        count = min(250, resamples - start)
        seed_index = rng.integers(seeds, size=(count, seeds, 1))
        video_index = rng.integers(videos, size=(count, seeds, videos))
        means[start : start + count] = values[seed_index, video_index].mean(axis=(1, 2))
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(values.mean()), float(low), float(high)


def interval(values: np.ndarray, resamples: int) -> str:
    mean, low, high = bootstrap_mean(values, resamples)
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def accuracy_cell(values: np.ndarray, resamples: int) -> str:
    mean, low, high = bootstrap_mean(values, resamples)
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


# -- training -----------------------------------------------------------------------------------
@dataclass
class Settings:
    hidden: int = 64
    epochs: int = 60
    batch: int = 128
    lr: float = 3e-3
    temperature: float = 4.0
    lambda1: float = 1.0
    lambda2: float = 1.0
    folds: int = 2


@dataclass
class Run:
    view: str
    test_correct: np.ndarray  # (V,) bool
    test_logits: np.ndarray
    train_accuracy: float
    best_epoch: int
    val_accuracy: float
    seconds: float


def tensors(data: FeatureSet) -> dict[str, torch.Tensor]:
    return {
        "nodes": torch.from_numpy(data.nodes),
        "valid": torch.from_numpy(data.valid),
        "labels": torch.from_numpy(data.labels),
    }


@torch.no_grad()
def predict(model, data: dict[str, torch.Tensor], batch: int = 512) -> torch.Tensor:
    model.eval()
    out = [
        model(data["nodes"][i : i + batch], data["valid"][i : i + batch]) for i in range(0, len(data["labels"]), batch)
    ]
    return torch.cat(out)


def train(
    view: str,
    train_set: FeatureSet,
    val_set: FeatureSet,
    test_set: FeatureSet,
    seed: int,
    settings: Settings,
    teacher: np.ndarray | None = None,
    extra: FeatureSet | None = None,
    extra_teacher: np.ndarray | None = None,
    eval_sets: tuple[FeatureSet, ...] = (),
) -> tuple[Run, list[np.ndarray]]:
    """Train one ``build_model`` view in memory; keep the epoch best on val; return its run and logits on ``eval_sets``.

    ``teacher`` (train videos x classes) adds the distillation term of
    :class:`hoitool.losses.Objective`; ``extra`` videos carry only
    ``extra_teacher`` targets (no label, no supervised term).
    """
    start = time.perf_counter()
    torch.manual_seed(seed)
    classes = len(train_set.classes)
    model = build_model({"view": view, "hidden": settings.hidden}, train_set.nodes.shape[-1], classes)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    objective = Objective(
        multilabel=False,
        distill="kd" if teacher is not None else None,
        temperature=settings.temperature,
        lambda1=settings.lambda1,
        lambda2=settings.lambda2,
    )
    data = tensors(train_set)
    labelled = torch.ones(len(train_set), dtype=torch.bool)
    targets = None if teacher is None else torch.as_tensor(teacher, dtype=torch.float32)
    if extra is not None:
        more = tensors(extra)
        data = {key: torch.cat([data[key], more[key]]) for key in data}
        labelled = torch.cat([labelled, torch.zeros(len(extra), dtype=torch.bool)])
        targets = torch.cat([targets, torch.as_tensor(extra_teacher, dtype=torch.float32)])
    val, generator = tensors(val_set), torch.Generator().manual_seed(seed)
    best = (-1.0, 0, None)
    for epoch in range(1, settings.epochs + 1):
        model.train()
        for index in torch.randperm(len(labelled), generator=generator).split(settings.batch):
            logits = model(data["nodes"][index], data["valid"][index])
            terms = objective(logits, data["labels"][index], None if targets is None else targets[index])
            if targets is None:
                loss = terms["ce"].mean()
            else:  # unlabelled videos: the distillation term only
                mask = labelled[index].float()
                loss = (settings.lambda1 * terms["ce"] * mask + settings.lambda2 * terms["distill"]).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        accuracy = float((predict(model, val).argmax(1) == val["labels"]).float().mean())
        if accuracy > best[0]:
            best = (accuracy, epoch, {k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[2])
    test = tensors(test_set)
    test_logits = predict(model, test)
    train_part = {key: value[: len(train_set)] for key, value in data.items()}
    train_accuracy = float((predict(model, train_part).argmax(1) == train_part["labels"]).float().mean())
    run = Run(
        view,
        (test_logits.argmax(1) == test["labels"]).numpy(),
        test_logits.numpy(),
        train_accuracy,
        best[1],
        best[0],
        time.perf_counter() - start,
    )
    return run, [predict(model, tensors(extra_set)).numpy() for extra_set in eval_sets]


# -- the main table -------------------------------------------------------------------------------
def seed_data(seed: int, args) -> dict[str, FeatureSet]:
    """One seed's splits (the data seed): val and test as large as train, extra unlabelled videos for --distill."""
    common = dict(seed=seed, frames=args.frames, dim=args.dim, noise=args.noise)
    splits = {split: generate_split(split, args.videos, **common) for split in ("train", "val", "test")}
    if args.distill:
        splits["unlabelled"] = generate_split("unlabelled", args.videos, **common)
    return splits


def context_masks(test: FeatureSet) -> dict[str, np.ndarray]:
    contexts = test.context_of()
    return {"all": np.ones(len(test), bool), **{c: contexts == c for c in CONTEXTS if (contexts == c).any()}}


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main_table(runs: list[dict[str, Run]], tests: list[FeatureSet], resamples: int) -> None:
    masks = context_masks(tests[0])
    ceilings = view_ceilings(tests[0], ("baseline", "local", "global"))
    contexts = [c for c in masks if c != "all"]
    rows = []
    for view in VIEWS:
        cells = []
        for context in ["all", *contexts]:
            values = np.stack([seed_runs[view].test_correct[masks[context]] for seed_runs in runs])
            cells.append(accuracy_cell(values, resamples))
        ceiling = context_means(ceilings[view], tests[0].contexts)
        overall = float(ceilings[view].mean())
        cells += [f"{overall:.2f} / " + " / ".join(f"{ceiling[c]:.2f}" for c in contexts)]
        rows.append([view, *cells])
    print_table(
        f"Test accuracy, mean over {len(runs)} seeds [95% bootstrap interval]; chance {1 / len(tests[0].classes):.3f}",
        ["view", "all", *contexts, "ceiling all / " + " / ".join(contexts)],
        rows,
    )
    rows = []
    for a, b in (("local", "baseline"), ("global", "baseline"), ("local", "global")):
        cells = []
        for context in ["all", *contexts]:
            values = np.stack(
                [
                    seed_runs[a].test_correct[masks[context]].astype(float) - seed_runs[b].test_correct[masks[context]]
                    for seed_runs in runs
                ]
            )
            cells.append(interval(values, resamples))
        rows.append([f"{a} - {b}", *cells])
    print_table(
        "Paired differences (same test videos and seeds) [95% bootstrap interval]",
        ["difference", "all", *contexts],
        rows,
    )
    rows = [
        [
            f"{seed}",
            view,
            f"{r.train_accuracy:.3f}",
            f"{r.val_accuracy:.3f}",
            f"{r.test_correct.mean():.3f}",
            str(r.best_epoch),
            f"{r.seconds:.1f}",
            flag(r, len(tests[0].classes), float(ceilings[view].mean())),
        ]
        for seed, seed_runs in enumerate(runs)
        for view, r in seed_runs.items()
        if view in VIEWS
    ]
    print_table("Runs", ["seed", "view", "train acc", "val acc", "test acc", "best epoch", "s", "flag"], rows)


def flag(run: Run, classes: int, ceiling: float = 1.0) -> str:
    """A run whose validation accuracy never left chance is flagged, not averaged in silently.

    Where chance is also the view's ceiling by construction (the baseline here), the flag says so.
    """
    if run.val_accuracy >= 1.5 / classes:
        return ""
    return "at chance (= its ceiling)" if ceiling < 1.5 / classes else "AT CHANCE"


# -- distillation ------------------------------------------------------------------------------
def cross_fitted(view: str, data: dict[str, FeatureSet], seed: int, settings: Settings) -> np.ndarray:
    """Out-of-fold logits on the train split: fold k's teacher never saw fold k's videos (folds by scene)."""
    train_set = data["train"]
    folds = train_set.scenes % settings.folds
    logits = np.zeros((len(train_set), len(train_set.classes)), np.float32)
    for fold in range(settings.folds):
        held = folds == fold
        _, (out,) = train(
            view,
            train_set.subset(~held),
            data["val"],
            data["test"],
            seed + 100 + fold,
            settings,
            eval_sets=(train_set.subset(held),),
        )
        logits[held] = out
    return logits


def smoothed_logits(
    labels: np.ndarray, classes: int, teacher: np.ndarray, temperature: float
) -> tuple[np.ndarray, float]:
    """Label smoothing matched to the teacher: the same mean non-target mass at the same temperature.

    Returned as logits ``T * log(q)`` so the very same KD term (softmax(logits / T)) sees ``q``.
    """
    soft = torch.softmax(torch.as_tensor(teacher) / temperature, dim=1).numpy()
    epsilon = float(1.0 - soft[np.arange(len(labels)), labels].mean())
    q = np.full((len(labels), classes), epsilon / (classes - 1))
    q[np.arange(len(labels)), labels] = 1.0 - epsilon
    return (temperature * np.log(q)).astype(np.float32), epsilon


def distill_runs(
    data, seed: int, plain: dict[str, Run], extra_logits: dict[str, np.ndarray], settings: Settings
) -> dict[tuple[str, str], dict[str, Run]]:
    """Per direction (teacher view, student view): the student variants and controls of one seed.

    ``plain`` are the main table's runs (the CE-only students, and the full
    teachers whose logits on the unlabelled videos are ``extra_logits``).
    """
    train_set, classes = data["train"], len(data["train"].classes)
    fitted = {view: cross_fitted(view, data, seed, settings) for view in ("global", "local")}
    shuffle = np.random.default_rng(seed).permutation(len(train_set))
    results = {}
    for teacher_view, student in (("global", "local"), ("local", "global")):
        smooth, epsilon = smoothed_logits(train_set.labels, classes, fitted[teacher_view], settings.temperature)
        args = (student, train_set, data["val"], data["test"], seed, settings)
        variants = {
            "CE only": plain[student],
            "KD, cross-fitted teacher": train(*args, teacher=fitted[teacher_view])[0],
            "KD + unlabelled videos": train(
                *args, teacher=fitted[teacher_view], extra=data["unlabelled"], extra_teacher=extra_logits[teacher_view]
            )[0],
            f"control: label smoothing (eps={epsilon:.2f})": train(*args, teacher=smooth)[0],
            "control: self-distillation": train(*args, teacher=fitted[student])[0],
            "control: self-distillation + unlabelled": train(
                *args, teacher=fitted[student], extra=data["unlabelled"], extra_teacher=extra_logits[student]
            )[0],
            "control: shuffled teacher logits": train(*args, teacher=fitted[teacher_view][shuffle])[0],
        }
        results[(teacher_view, student)] = variants
    return results


def distill_table(per_seed: list[dict], tests: list[FeatureSet], resamples: int) -> None:
    masks = context_masks(tests[0])
    contexts = [c for c in masks if c != "all"]
    for direction in per_seed[0]:
        names = list(per_seed[0][direction])
        rows = []
        plain = [next(iter(seed_result[direction].values())) for seed_result in per_seed]
        for position, name in enumerate(names):
            runs = [list(seed_result[direction].values())[position] for seed_result in per_seed]
            cells = []
            for context in ["all", *contexts]:
                values = np.stack([run.test_correct[masks[context]] for run in runs])
                base = np.stack([run.test_correct[masks[context]] for run in plain])
                cells.append(
                    accuracy_cell(values, resamples)
                    if position == 0
                    else interval(values - base.astype(float), resamples)
                )
            train_acc = np.mean([run.train_accuracy for run in runs])
            flags = sum(bool(flag(run, len(tests[0].classes))) for run in runs)
            rows.append([name, *cells, f"{train_acc:.3f}", str(flags) if flags else ""])
        print_table(
            f"{direction[0]} teacher -> {direction[1]} student: first row accuracy, then difference to it "
            "(same videos and seeds) [95% bootstrap interval]",
            ["student", "all", *contexts, "train acc", "runs at chance"],
            rows,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 40 videos per class, 10 epochs")
    parser.add_argument("--seeds", type=int, default=3, help="data and initialisation seeds (default 3)")
    parser.add_argument("--videos", type=int, default=200, help="videos per class in each split (default 200)")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--hidden", type=int, default=64, help="node width (the paper: 512; 64 keeps CPU runs short)")
    parser.add_argument("--frames", type=int, default=15, help="frames per video, a multiple of 15 (equal turns)")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--distill", action="store_true", help="also the distillation-vs-controls tables")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: best on a shared 2-core machine)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.videos, args.epochs = 1, 40, 10
    torch.set_num_threads(args.threads)
    settings = Settings(hidden=args.hidden, epochs=args.epochs)
    start = time.perf_counter()
    runs, tests, distilled = [], [], []
    for seed in range(args.seeds):
        data = seed_data(seed, args)
        init = 1000 + seed  # the initialisation seed moves with the data seed
        extra = (data["unlabelled"],) if args.distill else ()
        trained = {
            view: train(view, data["train"], data["val"], data["test"], init, settings, eval_sets=extra)
            for view in VIEWS
        }
        runs.append({view: run for view, (run, _) in trained.items()})
        tests.append(data["test"])
        if args.distill:
            extra_logits = {view: outs[0] for view, (_, outs) in trained.items()}
            distilled.append(distill_runs(data, init, runs[-1], extra_logits, settings))
        print(f"seed {seed} done at {time.perf_counter() - start:.0f} s", flush=True)
    print(
        f"\n{args.seeds} seeds x {len(tests[0])} test videos ({args.videos} per class), {args.frames} frames x 2 boxes, "
        f"D={args.dim}, noise {args.noise}; paper's configuration (no encodings, 1 GAT layer, 1 head, max pooling), "
        f"hidden {args.hidden}, {args.epochs} epochs, Adam lr {settings.lr}"
    )
    main_table(runs, tests, args.resamples)
    if args.distill:
        print(
            f"\nKD: T={settings.temperature}, lambda1={settings.lambda1}, lambda2={settings.lambda2}, "
            f"{settings.folds}-fold cross-fitted teacher logits; unlabelled: {args.videos} extra videos per class"
        )
        distill_table(distilled, tests, args.resamples)
    print(f"\nwall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
