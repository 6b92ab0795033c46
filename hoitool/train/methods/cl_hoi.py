"""``--method cl_hoi``: cross-level contrastive distillation from a vision-language teacher's text (CL-HOI, adapted).

On ``train-teacher`` (the VLM's text is the teacher) or ``distill --teacher RUN`` (plus GLIDN's KD from
that run). The inputs, all read and checked before any file is written:

* ``cl_hoi.vlm_import`` -- the JSON-lines captions/triplets (docs/vlm-import.md), matched to the manifest;
  captions without triplets get the rule set's;
* ``cl_hoi.text_encoder`` -- local text encoder (``tiny:32`` in tests); its embeddings of every caption,
  interaction, object, pair and class name are cached in ``cl_hoi.text_embeddings`` (default
  ``RUN/text_embeddings.npz``), a fingerprinted artifact (:mod:`hoitool.text.cache`) a fresh run
  builds (or reuses when current); the import's, encoder's and embeddings' digests are the run's
  ``upstream()`` (``last.pt``, ``run.json``), so resuming after any of them changed is refused
  (StaleArtifactError naming the file; ``--resume --force`` continues, rebuilding the embeddings);
* the boxes store's ``is_person`` (``cl_hoi.boxes``, default the features store's upstream): which nodes
  are humans for the instance-level :class:`hoitool.nn.contrastive.PairHead`.

The model (:class:`hoitool.nn.contrastive.ClHoiNet`) is the graph model plus a projection of its video embedding into the text
space and a pair head over the node embeddings after the graph layers. Terms per video (each with its
``w_*`` weight and temperature, :class:`hoitool.nn.contrastive.ContrastiveObjective`): ``ce`` (labels,
or with ``label_free`` the classes the teacher's interactions vote for, ``label_free_targets``),
``distill`` (KD from a teacher run, students only), ``context`` (InfoNCE video vs caption), ``i2t``,
``t2i`` (interaction contrast, pairs vs interaction texts), ``sr`` (soft relation on the pairs).
Outputs and ``eval`` are the classifier's, scored against the manifest's true labels. docs/method-cl-hoi.md.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from hoitool import log
from hoitool.errors import StaleArtifactError, UsageError
from hoitool.io.digest import file_sha256
from hoitool.train.methods import Method, register_method

if TYPE_CHECKING:
    import torch
    from torch import nn

    from hoitool.nn.contrastive import ClHoiNet
    from hoitool.nn.models import ContextGraphNet
    from hoitool.train.loop import Training

TEXT_EMBEDDINGS = "text_embeddings.npz"


def person_masks(
    boxes_path: Path, fingerprint: str | None, video_ids: list[str], views: int, force: bool
) -> np.ndarray:
    """``is_person (N, views, T, K)`` of the videos from the boxes store (a view reads its clip's boxes)."""
    from hoitool.store import open_store

    reader = open_store(boxes_path)
    if reader.kind != "boxes":
        raise UsageError(f"{boxes_path}: is a {reader.kind} store, expected the boxes store (cl_hoi.boxes)")
    if fingerprint is not None and reader.fingerprint != fingerprint:
        message = f"{boxes_path}: the boxes store changed since the features were extracted from it"
        if not force:
            raise StaleArtifactError(message + " (is_person would not match the nodes); use --force to use it anyway")
        log.warning(message + "; used anyway (--force)")
    rows = []
    for video in video_ids:
        if video not in reader.video_ids:
            raise UsageError(f"{boxes_path}: holds no boxes of video {video!r} (cl_hoi.boxes)")
        person = reader.read(video, ["is_person"])["is_person"]  # (C, T, K)
        clips = person.shape[0]
        rows.append(np.stack([person[view * clips // views] for view in range(views)]))
    reader.close()
    return np.stack(rows) if rows else np.zeros((0, views, 0, 0), bool)


def short_digest(sha256: str) -> str:
    """The first 16 hex digits of a sha256: enough to see a change, short enough for a one-line refusal."""
    return sha256[:16]


def same_text(classes: list[str]) -> None:
    """Refuse class names that read as the same text (label-free training tells classes apart by their text)."""
    from hoitool.text.cache import class_text

    seen: dict[str, str] = {}
    for name in classes:
        text = class_text(name)
        if text in seen:
            raise UsageError(
                f"label-free: the classes {seen[text]!r} and {name!r} both read as the text {text!r}; "
                "rename one in the manifest"
            )
        seen[text] = name


@register_method("cl_hoi")
class ClHoi(Method):
    """CL-HOI's losses on hoitool's graph model (see the module docstring)."""

    kinds = ("teacher", "student")

    def check(self, training: Training) -> None:
        super().check(training)
        from hoitool.text.cache import check_ours
        from hoitool.text.encoders import load_text_encoder
        from hoitool.text.vlm_import import fill_triplets, match_videos, read_vlm_import

        settings = self.config["cl_hoi"]
        if not settings["vlm_import"]:
            raise UsageError("--method cl_hoi needs the teacher's text: --vlm-import FILE (docs/vlm-import.md)")
        if training.ctx.world_size > 1:
            raise UsageError(
                "--method cl_hoi trains on one process (its in-batch contrast is not gathered across ranks)"
            )
        self.import_path = Path(settings["vlm_import"])
        self.texts = fill_triplets(read_vlm_import(self.import_path))
        without = match_videos(self.texts, [video.id for video in training.manifest.videos], str(self.import_path))
        if without:
            log.info(f"{self.import_path}: no text for {len(without)} manifest video(s); they get no text supervision")
        if settings["label_free"]:
            same_text(training.manifest.classes)
        self.encoder = load_text_encoder(settings["text_encoder"])
        self.text_dim = int(np.asarray(self.encoder.encode(["a person"])).shape[-1])
        self.embeddings_path = Path(settings["text_embeddings"] or Path(training.out) / TEXT_EMBEDDINGS)
        check_ours(self.embeddings_path)  # a file hoitool did not write is refused before any work
        self.fingerprints = {
            f"VLM import {self.import_path}": short_digest(file_sha256(self.import_path)),
            f"text encoder {settings['text_encoder']}": short_digest(
                hashlib.sha256(json.dumps(self.encoder.identity(), sort_keys=True).encode()).hexdigest()
            ),
        }
        self._note_embeddings()
        provenance = training.reader.provenance
        boxes = settings["boxes"] or (provenance.get("upstream") or {}).get("boxes_path")
        if not boxes:
            raise UsageError(
                f"{training.request.features}: the features store does not say which boxes store it came from; "
                "pass --set cl_hoi.boxes=BOXES.h5 (the pair head needs is_person)"
            )
        fingerprint = None if settings["boxes"] else (provenance.get("upstream") or {}).get("boxes")
        self.persons = {
            split: person_masks(Path(boxes), fingerprint, videos.video_ids, training.num_views, training.request.force)
            for split, videos in training.videos.items()
        }

    def setup(self, training: Training) -> None:
        import torch

        from hoitool.nn.contrastive import ContrastiveObjective, label_free_targets
        from hoitool.text.cache import build_text_embeddings, class_text, load_text_embeddings, pair_text
        from hoitool.text.triplets import negative_interactions

        settings = self.config["cl_hoi"]
        manifest_path = training.config["data"]["manifest"] or training.reader.manifest_path
        built = build_text_embeddings(
            self.embeddings_path,
            self.import_path,
            self.encoder,
            class_names=[class_text(name) for name in training.manifest.classes],
            manifest_path=manifest_path,
            template=settings["template"],
        )
        log.info(
            f"{self.embeddings_path}: text embeddings {'reused' if built['reused'] else 'built'} ({built['count']} texts)"
        )
        self._note_embeddings()
        bank = load_text_embeddings(self.embeddings_path, self.encoder.identity(), self.import_path, manifest_path)
        interactions, bank_rows = bank.of_kind("interaction")
        column = {text: i for i, text in enumerate(interactions)}
        train_ids = training.videos["train"].video_ids
        n, c, d = len(train_ids), len(interactions), bank_rows.shape[1]
        captions, caption_valid = np.zeros((n, d), np.float32), np.zeros(n, bool)
        positive, negative = np.zeros((n, c), bool), np.zeros((n, c), bool)
        most = max((len(t.triplets) for t in self.texts.values()), default=1) or 1
        pairs, pair_valid = np.zeros((n, most, d), np.float32), np.zeros((n, most), bool)
        seed = training.config["train"]["seed"]
        for row, video in enumerate(train_ids):
            text = self.texts.get(video)
            if text is None:
                continue
            if text.captions:
                captions[row], caption_valid[row] = bank.lookup(text.captions, "caption").mean(axis=0), True
            own = text.interactions()
            positive[row, [column[i] for i in own]] = True
            negatives = negative_interactions(own, interactions, settings["negatives"], seed, video)
            negative[row, [column[i] for i in negatives]] = True
            if text.triplets:
                texts = [pair_text(*triplet) for triplet in text.triplets]
                pairs[row, : len(texts)], pair_valid[row, : len(texts)] = bank.lookup(texts, "pair"), True
        device = training.ctx.device
        tensor = lambda array: torch.from_numpy(array).to(device)  # noqa: E731
        self.tables = {
            "captions": tensor(captions),
            "caption_valid": tensor(caption_valid),
            "positive": tensor(positive),
            "negative": tensor(negative),
        }
        self.bank = tensor(bank_rows.astype(np.float32))
        self.persons_tensor = {split: tensor(mask) for split, mask in self.persons.items()}
        if settings["label_free"]:
            _, classes = bank.of_kind("class")  # one row per class: same_text refused duplicates in check
            targets, labelled = label_free_targets(
                tensor(pairs),
                tensor(pair_valid),
                tensor(classes.astype(np.float32)),
                settings["threshold"],
                training.multilabel,
            )
            agree = self._agreement(targets, labelled, training)
            log.info(
                f"label-free: the teacher labels {int(labelled.sum())} of {n} train videos"
                + (f", {100 * agree:.1f}% of them as the manifest does" if agree is not None else "")
            )
            self.tables["targets"], self.tables["labelled"] = targets, labelled
        self.objective = ContrastiveObjective(
            w_context=settings["w_context"],
            w_i2t=settings["w_i2t"],
            w_t2i=settings["w_t2i"],
            w_sr=settings["w_sr"],
            t_context=settings["t_context"],
            t_interaction=settings["t_interaction"],
            t_sr=settings["t_sr"],
        )

    def _note_embeddings(self) -> None:
        """Record the text embeddings' bytes as they are now (none before a fresh run builds them)."""
        key = f"text embeddings {self.embeddings_path}"
        self.fingerprints.pop(key, None)
        if self.embeddings_path.is_file():
            self.fingerprints[key] = short_digest(file_sha256(self.embeddings_path))

    def upstream(self) -> dict[str, str]:
        """The VLM import, text encoder and text embeddings a run started from: a resume on changed ones is refused."""
        return dict(getattr(self, "fingerprints", {}))

    @staticmethod
    def _agreement(targets, labelled, training: Training) -> float | None:
        """How often the teacher's classes equal the true labels (single-label; None without a vote)."""
        if training.multilabel or not bool(labelled.any()):
            return None
        truth = np.asarray(training.videos["train"].targets)
        chosen = targets.cpu().numpy()
        mask = labelled.cpu().numpy()
        return float((chosen[mask] == truth[mask]).mean())

    def build_model(self, model_config: dict, in_dim: int, num_classes: int) -> nn.Module:
        from hoitool.nn.contrastive import ClHoiNet

        base = cast("ContextGraphNet", super().build_model(model_config, in_dim, num_classes))
        return ClHoiNet(base, self.text_dim, self.config["cl_hoi"]["pair_hidden"])

    def inputs(self, batch: dict, split: str) -> dict:
        table = self.persons_tensor[split] if hasattr(self, "persons_tensor") else None
        if table is None:
            return batch
        index, view = batch["index"].to(table.device), batch["view"].to(table.device)
        person = table[index, view.clamp(max=table.shape[1] - 1)]
        frames, slots = batch["valid"].shape[1:]
        return dict(batch, is_person=person[:, :frames, :slots].to(batch["valid"].device))

    def forward(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        from hoitool.train.distributed import unwrap

        return cast("ClHoiNet", unwrap(model)).outputs(
            batch["nodes"], batch["valid"], batch["boxes"], batch["frame_size"], batch.get("is_person")
        )

    def terms(self, training, position, batch, outputs, logits):
        import torch

        from hoitool.losses import supervised_loss

        index = batch["index"]
        objective = training.members[position].objective
        teacher = training._distill_target(position, logits, batch)
        terms, weights = objective.terms(logits[position], batch["target"], teacher), dict(objective.weights())
        if "targets" in self.tables:  # label-free: the teacher's classes, only where it voted
            labelled = self.tables["labelled"][index]
            targets = self.tables["targets"][index]
            if not training.multilabel:
                targets = torch.where(labelled, targets, torch.zeros_like(targets))
            terms["ce"] = supervised_loss(logits[position], targets, training.multilabel) * labelled
        weights["ce"] = weights["ce"] * self.config["cl_hoi"]["w_ce"]
        out = outputs[position]
        contrast = self.objective(
            out["video"].float(),
            self.tables["captions"][index],
            self.tables["caption_valid"][index],
            out["pairs"].float(),
            out["pair_valid"],
            self.bank,
            self.tables["positive"][index],
            self.tables["negative"][index],
        )
        contrast.pop("total")
        terms.update(contrast)
        weights.update({name: self.config["cl_hoi"][f"w_{name}"] for name in contrast})
        return terms, weights, [logits[position], out["video"], out["pairs"]]

    def run_info(self) -> dict:
        info = {"name": self.name, **self.config["cl_hoi"]}
        if hasattr(self, "embeddings_path"):
            info["text_embeddings"] = str(self.embeddings_path.resolve())
        if hasattr(self, "fingerprints"):
            info["fingerprints"] = self.upstream()  # as at the run's start (last.pt holds them per epoch)
        return info

    def label(self, kind: str, view: str, teacher_view: str | None) -> str:
        base = super().label(kind, view, teacher_view)
        return f"cl_hoi{' label-free' if self.config['cl_hoi']['label_free'] else ''} ({base})"
