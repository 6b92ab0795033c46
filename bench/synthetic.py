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
3. a second, separately labelled table: the same views with hoitool's
   extensions (frame-time, and frame-time + box-geometry encodings), which
   are not the paper's (``--encodings none`` skips it);
4. with ``--distill``: global -> local and local -> global students on
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
from hoitool.eval.stats import at_chance, bootstrap_mean, chance_level, paired_difference
from hoitool.losses import Objective
from hoitool.nn.models import build_model

VIEWS = ("baseline", "local", "global")
# hoitool's extensions, not the paper's: the second table (name -> model keys turned on for every view in it)
ENCODINGS = {
    "time": {"time_encoding": True},
    "time+geometry": {"time_encoding": True, "geometry_encoding": True},
}


# -- statistics (hoitool.eval.stats) -------------------------------------------------------------
def interval(values: np.ndarray, resamples: int) -> str:
    return bootstrap_mean(values, resamples).text(signed=True)


def accuracy_cell(values: np.ndarray, resamples: int) -> str:
    return bootstrap_mean(values, resamples).text()


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
    train_correct: np.ndarray | None = None  # (train videos,) bool


def tensors(data: FeatureSet) -> dict[str, torch.Tensor]:
    return {
        "nodes": torch.from_numpy(data.nodes),
        "valid": torch.from_numpy(data.valid),
        "boxes": torch.from_numpy(data.boxes),
        "frame_size": torch.from_numpy(data.frame_size),
        "labels": torch.from_numpy(data.labels),
    }


def forward(model, data: dict[str, torch.Tensor], index) -> torch.Tensor:
    """The model on the videos at ``index``, with their boxes and frame size (read only by a geometry encoding)."""
    return model(data["nodes"][index], data["valid"][index], data["boxes"][index], data["frame_size"][index])


@torch.no_grad()
def predict(model, data: dict[str, torch.Tensor], batch: int = 512) -> torch.Tensor:
    model.eval()
    out = [forward(model, data, slice(i, i + batch)) for i in range(0, len(data["labels"]), batch)]
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
    encodings: dict | None = None,
) -> tuple[Run, list[np.ndarray]]:
    """Train one ``build_model`` view in memory; keep the epoch best on val; return its run and logits on ``eval_sets``.

    ``teacher`` (train videos x classes) adds the distillation term of
    :class:`hoitool.losses.Objective`; ``extra`` videos carry only
    ``extra_teacher`` targets (no label, no supervised term). ``encodings``:
    model keys of hoitool's extensions to turn on (the second table).
    """
    start = time.perf_counter()
    torch.manual_seed(seed)
    classes = len(train_set.classes)
    model_config = {"view": view, "hidden": settings.hidden, **(encodings or {})}
    model = build_model(model_config, train_set.nodes.shape[-1], classes)
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
            logits = forward(model, data, index)
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
    train_correct = (predict(model, train_part).argmax(1) == train_part["labels"]).numpy()
    run = Run(
        view,
        (test_logits.argmax(1) == test["labels"]).numpy(),
        test_logits.numpy(),
        float(train_correct.mean()),
        best[1],
        best[0],
        time.perf_counter() - start,
        train_correct,
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


def accuracy_table(title: str, runs: list[dict[str, Run]], names, tests, ceilings: dict, resamples: int) -> None:
    """One row per method: accuracy over all and per context [interval], and the method's ceiling."""
    masks = context_masks(tests[0])
    contexts = [c for c in masks if c != "all"]
    rows = []
    for name in names:
        cells = []
        for context in ["all", *contexts]:
            values = np.stack([seed_runs[name].test_correct[masks[context]] for seed_runs in runs])
            cells.append(accuracy_cell(values, resamples))
        ceiling = context_means(ceilings[name], tests[0].contexts)
        cells.append(f"{float(ceilings[name].mean()):.2f} / " + " / ".join(f"{ceiling[c]:.2f}" for c in contexts))
        rows.append([name, *cells])
    print_table(title, ["view", "all", *contexts, "ceiling all / " + " / ".join(contexts)], rows)


def difference_table(title: str, runs: list[dict[str, Run]], pairs, tests, resamples: int) -> None:
    """Paired differences ``a - b`` on the same test videos and seeds, over all and per context."""
    masks = context_masks(tests[0])
    contexts = [c for c in masks if c != "all"]
    rows = []
    for a, b in pairs:
        cells = []
        for context in ["all", *contexts]:
            first = np.stack([seed_runs[a].test_correct[masks[context]] for seed_runs in runs])
            second = np.stack([seed_runs[b].test_correct[masks[context]] for seed_runs in runs])
            cells.append(paired_difference(first, second, resamples).text(signed=True))
        rows.append([f"{a} - {b}", *cells])
    print_table(title, ["difference", "all", *contexts], rows)


def encoded(view: str, encoding: str) -> str:
    return f"{view} + {encoding}"


def main_table(runs: list[dict[str, Run]], tests: list[FeatureSet], resamples: int, encodings=()) -> None:
    """The paper's configuration first; hoitool's encodings in a second, labelled table; then every run."""
    ceilings = view_ceilings(tests[0])
    chance = chance_level(tests[0].labels, len(tests[0].classes))
    accuracy_table(
        f"Table 1, the paper's configuration (no encodings): test accuracy, mean over {len(runs)} seeds "
        f"[95% bootstrap interval]; chance {chance:.3f}",
        runs,
        VIEWS,
        tests,
        ceilings,
        resamples,
    )
    difference_table(
        "Table 1, paired differences (same test videos and seeds) [95% bootstrap interval]",
        runs,
        (("local", "baseline"), ("global", "baseline"), ("local", "global")),
        tests,
        resamples,
    )
    names = list(VIEWS)
    for encoding in encodings:
        group = [encoded(view, encoding) for view in VIEWS]
        names += group
        accuracy_table(
            f"Table 2 (hoitool's extensions, not the paper's): + {encoding} encoding on every node of every view; "
            "ceiling: the ordered video",
            runs,
            group,
            tests,
            {name: ceilings["ordered"] for name in group},
            resamples,
        )
        difference_table(
            f"Table 2, paired differences (+ {encoding}) [95% bootstrap interval]",
            runs,
            [(group[1], group[0]), (group[2], group[0]), *((encoded(v, encoding), v) for v in VIEWS)],
            tests,
            resamples,
        )
    rows = [
        [
            f"{seed}",
            name,
            f"{r.train_accuracy:.3f}",
            f"{r.val_accuracy:.3f}",
            f"{r.test_correct.mean():.3f}",
            str(r.best_epoch),
            f"{r.seconds:.1f}",
            flag(r, chance, float(ceilings[r.view if name in VIEWS else "ordered"].mean())),
        ]
        for seed, seed_runs in enumerate(runs)
        for name, r in seed_runs.items()
        if name in names
    ]
    print_table("Runs", ["seed", "view", "train acc", "val acc", "test acc", "best epoch", "s", "flag"], rows)


def flag(run: Run, chance: float, ceiling: float = 1.0) -> str:
    """A run stuck at chance is flagged, not averaged in silently (hoitool.eval.stats.at_chance).

    Stuck: chance lies within the bootstrap interval of its test accuracy, or of its train accuracy.
    Where chance is also the view's ceiling by construction (the baseline here), the flag says so.
    """
    train = run.train_correct if run.train_correct is not None else np.array([run.train_accuracy])
    if not (at_chance(run.test_correct, chance) or at_chance(train, chance)):
        return ""
    return "at chance (= its ceiling)" if ceiling < 1.5 * chance else "AT CHANCE"


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
            chance = chance_level(tests[0].labels, len(tests[0].classes))
            flags = sum(bool(flag(run, chance)) for run in runs)
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
    parser.add_argument(
        "--encodings",
        default=",".join(ENCODINGS),
        help=f"the second table's extensions, comma-separated from {', '.join(ENCODINGS)}, or none",
    )
    args = parser.parse_args()
    encodings = [] if args.encodings == "none" else args.encodings.split(",")
    unknown = sorted(set(encodings) - set(ENCODINGS))
    if unknown:
        parser.error(f"--encodings: unknown {', '.join(unknown)} (choose from {', '.join(ENCODINGS)} or none)")
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
        for encoding in encodings:
            for view in VIEWS:
                runs[-1][encoded(view, encoding)] = train(
                    view, data["train"], data["val"], data["test"], init, settings, encodings=ENCODINGS[encoding]
                )[0]
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
    main_table(runs, tests, args.resamples, encodings)
    if args.distill:
        print(
            f"\nKD: T={settings.temperature}, lambda1={settings.lambda1}, lambda2={settings.lambda2}, "
            f"{settings.folds}-fold cross-fitted teacher logits; unlabelled: {args.videos} extra videos per class"
        )
        distill_table(distilled, tests, args.resamples)
    print(f"\nwall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
