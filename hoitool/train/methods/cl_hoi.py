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
  are humans for the instance-level :class:`hoitool.nn.contrastive.PairHead`;
* optionally ``cl_hoi.regions`` (``--region-embeddings``): the union-box embeddings of every (person,
  object) pair (``hoitool text regions``, :mod:`hoitool.text.regions`), of this features store and of
  the text encoder's CLIP, refused when stale; the soft-relation pseudo-labels of each train video's
  pairs come from them (:func:`hoitool.text.regions.region_pseudo_labels`). Without them every valid
  pair gets 1 for each positive (image-level), and the log says so.

Data-parallel (``torchrun``): the forward goes through the DDP wrapper (``ClHoiNet.forward(...,
outputs=True)``) and the in-batch terms (context, t2i) see the whole global batch
(:class:`hoitool.train.gather.BatchGather`); each rank keeps its own samples' terms, so N ranks train
as one process on the same global batch (tests/test_ddp_methods.py).

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
from hoitool.io.digest import file_sha256, short_digest
from hoitool.train.methods import Method, register_method

if TYPE_CHECKING:
    import torch
    from torch import nn

    from hoitool.nn.models import ContextGraphNet
    from hoitool.train.loop import Training

TEXT_EMBEDDINGS = "text_embeddings.npz"


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
        from hoitool.text.regions import person_masks
        from hoitool.text.vlm_import import fill_triplets, match_videos, read_vlm_import

        settings = self.config["cl_hoi"]
        if not settings["vlm_import"]:
            raise UsageError("--method cl_hoi needs the teacher's text: --vlm-import FILE (docs/vlm-import.md)")
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
        self._check_regions(training)
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
        if training.ctx.is_main:  # one writer: the other ranks read what rank 0 built
            built = build_text_embeddings(
                self.embeddings_path,
                self.import_path,
                self.encoder,
                class_names=[class_text(name) for name in training.manifest.classes],
                manifest_path=manifest_path,
                template=settings["template"],
            )
            log.info(
                f"{self.embeddings_path}: text embeddings {'reused' if built['reused'] else 'built'} "
                f"({built['count']} texts)"
            )
        training.ctx.barrier()
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
        self.pseudo = self._pseudo_labels(training, bank, column, bank_rows) if self.regions is not None else None
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
        if self.pseudo is None:
            log.info("soft-relation pseudo-labels: image-level (no --region-embeddings)")
        self.objective = ContrastiveObjective(
            w_context=settings["w_context"],
            w_i2t=settings["w_i2t"],
            w_t2i=settings["w_t2i"],
            w_sr=settings["w_sr"],
            t_context=settings["t_context"],
            t_interaction=settings["t_interaction"],
            t_sr=settings["t_sr"],
        )

    def _check_regions(self, training: Training) -> None:
        """The region embeddings, when given: of this features store, intact, of the text encoder's CLIP (before any work)."""
        from hoitool.text.regions import check_same_clip, load_region_embeddings

        settings = self.config["cl_hoi"]
        self.regions = None
        if not settings["regions"]:
            return
        path = Path(settings["regions"])
        self.regions, sha256 = load_region_embeddings(path, training.reader.fingerprint, training.request.force)
        check_same_clip(self.encoder.identity(), self.regions.info["encoder"], self.text_dim, self.regions.dim)
        missing = [video for video in training.videos["train"].video_ids if video not in self.regions.videos]
        if missing:
            raise UsageError(
                f"{path}: holds no region embeddings of {len(missing)} train video(s) (first {missing[0]!r}); "
                "build them over the train split (hoitool text regions --split train)"
            )
        if int(self.regions.info.get("views", 1)) != training.num_views:
            raise StaleArtifactError(
                f"{path}: made for {self.regions.info.get('views')} views, the store has {training.num_views}"
            )
        self.fingerprints[f"region embeddings {path}"] = short_digest(sha256)

    def _pseudo_labels(self, training: Training, bank, column: dict[str, int], verbs: np.ndarray) -> dict:
        """``{(train position, view): (pairs (P, 3), columns (Cp,), y (P, Cp))}`` from the region embeddings (A.3).

        A positive interaction's object is its first triplet's that names one (ours: the paper's
        triplets are one object each). The file's pairs must be the pairs the pair head forms
        (valid person x valid non-person of the features store's view): a mismatch is refused.
        """
        import torch

        from hoitool.text.regions import region_pseudo_labels

        assert self.regions is not None
        settings = self.config["cl_hoi"]
        persons = self.persons["train"]
        out: dict = {}
        pairs_total = 0
        for row, video in enumerate(training.videos["train"].video_ids):
            pairs, regions = self.regions.read(video)
            valid = training.reader.read(video, ["valid"])["valid"]  # (V, T, K)
            for view in range(valid.shape[0]):
                person = persons[row, view][: valid.shape[1], : valid.shape[2]]
                expected = int(((valid[view] & person)[:, :, None] & (valid[view] & ~person)[:, None, :]).sum())
                if expected != int((pairs[:, 0] == view).sum()):
                    raise StaleArtifactError(
                        f"{self.regions.path}: video {video!r} view {view} has {int((pairs[:, 0] == view).sum())} "
                        f"pairs there but {expected} in the features store; rebuild them (hoitool text regions)"
                    )
            pairs_total += len(pairs)
            text = self.texts.get(video)
            if text is None or not len(pairs):
                continue
            own = text.interactions()
            objects: dict[str, str] = {}
            for interaction, obj in text.triplets:
                if obj is not None:
                    objects.setdefault(interaction, obj)
            object_rows = np.zeros((len(own), verbs.shape[1]), np.float32)
            object_valid = np.zeros(len(own), bool)
            for k, interaction in enumerate(own):
                if interaction in objects:
                    object_rows[k], object_valid[k] = bank.lookup([objects[interaction]], "object")[0], True
            columns = np.array([column[i] for i in own], np.int64)
            labels = region_pseudo_labels(
                pairs, regions, verbs[columns], object_rows, object_valid, settings["t_pseudo"]
            )
            for view, (view_pairs, y) in labels.items():
                out[(row, view)] = (  # small types: ~10 KB per video at Charades scale (832 pairs, 3 positives)
                    torch.from_numpy(view_pairs.astype(np.int16)),
                    torch.from_numpy(columns),
                    torch.from_numpy(y.astype(np.float16)),
                )
        self.regions.close()
        log.info(
            f"soft-relation pseudo-labels: from the region embeddings {self.regions.path} "
            f"({pairs_total} pairs of {len(training.videos['train'])} train videos)"
        )
        return out

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
        # through the (DDP) wrapper, so that its gradient hooks see this pass; ClHoiNet returns the dict
        return model(
            batch["nodes"], batch["valid"], batch["boxes"], batch["frame_size"], batch.get("is_person"), outputs=True
        )

    def terms(self, training, position, batch, outputs, logits):
        import torch

        from hoitool.losses import supervised_loss
        from hoitool.nn.contrastive import dense_pair_targets
        from hoitool.train.gather import BatchGather

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
        sr_targets = None
        if self.pseudo is not None and self.objective.w_sr:
            frames, slots = batch["valid"].shape[1:]
            keys = zip(index.tolist(), batch["view"].tolist(), strict=True)
            entries = [self.pseudo.get(key) for key in keys]
            sr_targets = dense_pair_targets(entries, frames, slots, len(self.bank), self.bank.device)
        gather = BatchGather(len(index), index.device) if training.ctx.distributed else None
        contrast = self.objective(
            out["video"].float(),
            self.tables["captions"][index],
            self.tables["caption_valid"][index],
            out["pairs"].float(),
            out["pair_valid"],
            self.bank,
            self.tables["positive"][index],
            self.tables["negative"][index],
            sr_targets=sr_targets,
            real=batch["weight"] > 0,  # a rank's zero-weight dummy takes no part in the in-batch contrast
            gather=gather,
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
