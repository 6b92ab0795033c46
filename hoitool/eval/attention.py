"""Look, not only read: one video's sampled frames with its boxes, coloured by a per-box weight.

:func:`draw_box_weights` is the drawing (frames + boxes + one weight per box; reusable for any
per-box map, e.g. dual attention). :func:`run_attention` reads a trained run's graph attention for
one video: which nodes each human attends to, per frame for the local view (its graph is the
frame), across all frames for the global view (from one human node). :func:`attention_figure`
puts the two together. matplotlib and torch are imported only when a figure is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hoitool.errors import UsageError
from hoitool.io.atomic import atomic_path
from hoitool.manifest import Manifest
from hoitool.runs import best_checkpoint, read_run_info

PANELS_PER_ROW = 4


def draw_box_weights(
    frames: np.ndarray,
    boxes: np.ndarray,
    valid: np.ndarray,
    weights: np.ndarray,
    out: Path | str,
    focus: list[tuple[int, int]] | tuple = (),
    title: str = "",
    frame_titles: list[str] | None = None,
) -> Path:
    """Write a PNG: frames (T, H, W, 3) uint8 with boxes (T, K, 4) xyxy pixels where valid (T, K).

    Each box is outlined in a colour and width given by its weight (T, K) in [0, 1], written
    beside it; ``focus`` boxes (frame, slot) are the querying nodes, drawn dashed in white.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    frames, boxes, valid, weights = map(np.asarray, (frames, boxes, valid, weights))
    count = frames.shape[0]
    if boxes.shape[:2] != valid.shape or weights.shape != valid.shape or valid.shape[0] != count:
        raise ValueError(
            f"frames {frames.shape}, boxes {boxes.shape}, valid {valid.shape}, weights {weights.shape} do not agree"
        )
    columns = min(PANELS_PER_ROW, count)
    rows = -(-count // columns)
    figure = Figure(figsize=(2.6 * columns + 0.8, 2.7 * rows + (0.4 if title else 0)))
    FigureCanvasAgg(figure)
    cmap, norm = colormaps["plasma"], Normalize(0.0, 1.0)
    axes = figure.subplots(rows, columns, squeeze=False)
    focused = set(map(tuple, focus))
    for index, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if index >= count:
            continue
        ax.imshow(frames[index])
        ax.set_title(frame_titles[index] if frame_titles else f"frame {index}", fontsize=8)
        for slot in np.flatnonzero(valid[index]):
            x1, y1, x2, y2 = (float(v) for v in boxes[index, slot])
            weight = float(np.clip(weights[index, slot], 0.0, 1.0))
            ax.add_patch(
                Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=cmap(norm(weight)), lw=1 + 3 * weight)
            )
            if (index, int(slot)) in focused:
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="white", lw=1, ls="--"))
            ax.text(x1, y1 - 1, f"{weight:.2f}", color="white", fontsize=7, va="bottom",
                    bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "lw": 0})  # fmt: skip
    figure.colorbar(ScalarMappable(norm, cmap), ax=list(axes.flat), fraction=0.02, pad=0.01, label="weight")
    if title:
        figure.suptitle(title, fontsize=9)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return out


@dataclass
class AttentionView:
    """What :func:`attention_figure` draws: one video's boxes and the weights its humans give them."""

    video_id: str
    view: str
    frame_indices: np.ndarray  # (T,) frames of the source video the nodes come from
    boxes: np.ndarray  # (T, K, 4)
    valid: np.ndarray  # (T, K)
    weights: np.ndarray  # (T, K): the attention the focus node(s) give each box (0 where none)
    focus: list[tuple[int, int]] = field(default_factory=list)  # the querying human nodes (frame, slot)
    attention: np.ndarray | None = None  # (N, N) the layer's attention, mean over heads
    label: str = ""
    predicted: str = ""


def _model_and_inputs(run_dir: Path, video_id: str):
    """The run's best.pt model (eval mode) and the video's first test-time view from the run's features store."""
    import torch

    from hoitool.nn.models import build_model
    from hoitool.store import open_store
    from hoitool.train.checkpoint import load_checkpoint

    info = read_run_info(run_dir)
    if info.get("view") not in ("global", "local"):
        raise UsageError(f"{run_dir}: a {info.get('view')} run has no graph attention (choose a global or local run)")
    checkpoint = best_checkpoint(run_dir)
    if not checkpoint.is_file():
        raise UsageError(f"{checkpoint}: missing (has the run finished an epoch?)")
    state = load_checkpoint(checkpoint)
    model = build_model(state["model_config"], state["in_dim"], state["num_classes"])
    model.load_state_dict(state["model"])
    model.eval()
    store = open_store(info["features"])
    if video_id not in store.video_ids:
        raise UsageError(f"video {video_id!r}: not in {info['features']} (the run's features store)")
    arrays = store.read(video_id)
    inputs = {
        "nodes": torch.from_numpy(arrays["nodes"][:1].astype(np.float32)),
        "valid": torch.from_numpy(arrays["valid"][:1]),
        "boxes": torch.from_numpy(arrays["boxes"][:1].astype(np.float32)),
        "frame_size": torch.from_numpy(np.asarray(arrays["frame_size"], np.float32)[None]),
    }
    return info, model, inputs, arrays, store


def humans(store, video_id: str, valid: np.ndarray) -> np.ndarray:
    """(T, K) which nodes are people: the boxes store's ``is_person`` where it is known, else slot 0."""
    boxes_path = store.provenance.get("upstream", {}).get("boxes_path")
    if boxes_path and Path(boxes_path).exists():
        from hoitool.store import open_store

        boxes = open_store(boxes_path)
        if video_id in boxes.video_ids:
            is_person = boxes.read(video_id, ["is_person"]).get("is_person")
            if is_person is not None and is_person[0].shape == valid.shape:
                return is_person[0] & valid
    guess = np.zeros_like(valid)
    guess[:, 0] = valid[:, 0]
    return guess


def run_attention(run_dir: Path | str, video_id: str, layer: int = -1, frame: int | None = None) -> AttentionView:
    """One video's graph attention in a trained run (best.pt), as the weights its humans give each box.

    Local view: in every frame, the weights of that frame's first human over its frame's boxes.
    Global view: the weights of one human node over every box of the video; ``frame`` picks the
    sampled frame of that human (default: the first frame showing one). Heads are averaged.
    """
    import torch

    run_dir = Path(run_dir)
    info, model, inputs, arrays, store = _model_and_inputs(run_dir, video_id)
    with torch.no_grad():
        layers = model.attention(**inputs)
        logits = model(**inputs)
    if not -len(layers) <= layer < len(layers):
        raise UsageError(f"--layer {layer}: the model has {len(layers)} graph layer(s)")
    attention = layers[layer][0].mean(dim=0).numpy()  # (N, N)
    valid = np.asarray(arrays["valid"][0], bool)
    frames, slots = valid.shape
    people = humans(store, video_id, valid)
    weights = np.zeros((frames, slots), np.float32)
    focus: list[tuple[int, int]] = []
    if info["view"] == "local":
        for t in range(frames):
            humans_here = np.flatnonzero(people[t])
            if humans_here.size:
                first = int(humans_here[0])
                focus.append((t, first))
                weights[t] = attention[t * slots + first, t * slots : (t + 1) * slots]
    else:
        shown = [t for t in range(frames) if people[t].any()]
        if frame is None:
            frame = shown[0] if shown else 0
        if not 0 <= frame < frames or not people[frame].any():
            raise UsageError(f"--frame {frame}: no human node in that sampled frame (frames with one: {shown})")
        person = int(np.flatnonzero(people[frame])[0])
        focus.append((frame, person))
        weights = attention[frame * slots + person].reshape(frames, slots).astype(np.float32)
    classes = info["classes"]
    return AttentionView(
        video_id=video_id,
        view=info["view"],
        frame_indices=np.asarray(arrays["frame_indices"][0]),
        boxes=np.asarray(arrays["boxes"][0]),
        valid=valid,
        weights=weights,
        focus=focus,
        attention=attention,
        label=_true_label(store, video_id, classes),
        predicted=classes[int(logits[0].argmax())],
    )


def _true_label(store, video_id: str, classes: list[str]) -> str:
    try:
        entry = Manifest.load(store.manifest_path).by_id()[video_id]
    except (OSError, KeyError, ValueError, UsageError):
        return ""
    return ", ".join(classes[i] for i in entry.labels if 0 <= i < len(classes))


def _frames(store, video_id: str, indices: np.ndarray) -> np.ndarray:
    """The sampled frames, decoded from the video the run's features were made from."""
    from hoitool.video.reader import read_frames

    manifest_path = store.manifest_path
    if not manifest_path or not Path(manifest_path).is_file():
        raise UsageError(f"{store.path}: its manifest ({manifest_path or 'not recorded'}) is missing")
    manifest = Manifest.load(manifest_path)
    entry = manifest.by_id().get(video_id)
    if entry is None:
        raise UsageError(f"video {video_id!r}: not in {manifest_path}")
    return read_frames(manifest.source_path(entry), entry.kind, indices)


def attention_figure(
    run_dir: Path | str, video_id: str, out: Path | str, layer: int = -1, frame: int | None = None
) -> AttentionView:
    """Draw :func:`run_attention` over the video's frames into the PNG ``out``; returns what was drawn."""
    from hoitool.store import open_store

    run_dir = Path(run_dir)
    view = run_attention(run_dir, video_id, layer, frame)
    store = open_store(read_run_info(run_dir)["features"])
    frames = _frames(store, video_id, view.frame_indices)
    how = "each frame's human over its frame" if view.view == "local" else "one human (dashed) over every frame"
    title = f"{run_dir.name}: {view.view} attention of {how}; video {video_id}"
    if view.label:
        title += f"\ntrue: {view.label}; predicted: {view.predicted}"
    titles = [f"frame {int(i)}" for i in view.frame_indices]
    draw_box_weights(frames, view.boxes, view.valid, view.weights, out, view.focus, title, titles)
    return view
