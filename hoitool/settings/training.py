"""``train-teacher`` and ``distill``: every setting and its default (presets: hoitool.train.presets)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from hoitool.losses import AUTO, list_distill_losses
from hoitool.settings.base import Section
from hoitool.train.methods import DEFAULT as DEFAULT_METHOD
from hoitool.train.methods import list_methods

View = Literal["global", "local", "baseline"]


class ModelSettings(Section):
    view: View = Field(
        "global", description="context graph: global (whole video), local (per frame), baseline (no graph)"
    )
    hidden: int = Field(512, ge=1, description="width of the graph layers (a multiple of heads)")
    layers: int = Field(1, ge=1, le=3, description="graph-attention layers")
    heads: int = Field(1, ge=1, description="attention heads per layer")
    pooling: Literal["max", "mean"] = Field(
        "max", description="pooling of the node embeddings into the video embedding"
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on node embeddings")
    residual: bool = Field(False, description="residual connections around the graph layers (beyond the paper)")
    geometry_encoding: bool = Field(False, description="add a box-geometry encoding to each node (beyond the paper)")
    time_encoding: bool = Field(False, description="add a frame-time encoding to each node (beyond the paper)")
    input_norm: bool = Field(False, description="LayerNorm on the input node features (beyond the paper)")

    @model_validator(mode="after")
    def _hidden_divides(self) -> ModelSettings:
        if self.hidden % self.heads:
            raise ValueError(f"model.hidden ({self.hidden}) must be a multiple of model.heads ({self.heads})")
        return self


class OptimSettings(Section):
    name: Literal["adam", "sgd"] = Field("adam", description="optimizer")
    lr: float = Field(1e-3, gt=0, description="initial learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(0.0, ge=0, description="L2 weight decay")


class ScheduleSettings(Section):
    step_size: int = Field(0, ge=0, description="step decay: lr *= gamma every step_size epochs (0: constant lr)")
    gamma: float = Field(0.1, gt=0, le=1, description="step decay factor")


class TrainSettings(Section):
    epochs: int = Field(30, ge=1, description="number of epochs")
    batch_size: int = Field(16, ge=1, description="global batch size in videos (split across DDP ranks)")
    seed: int = Field(0, ge=0, description="seed of initialisation, batch order and dropout")
    amp: bool = Field(False, description="mixed precision (CUDA only)")
    amp_dtype: Literal["bf16", "fp16"] = Field("bf16", description="dtype of mixed precision")
    tensorboard: bool = Field(
        False,
        description="also write TensorBoard event files under RUN/tensorboard/ (metrics.jsonl stays the record; "
        "needs pip install 'hoitool[tensorboard]')",
    )
    embeddings: bool = Field(
        False,
        description="also write the node embeddings after the graph layers of the train split "
        "(RUN/embeddings.npz: what distill --method anticipation reads)",
    )


class DataSettings(Section):
    preload: bool | Literal["auto"] = Field(
        "auto", description="read the store into RAM: true, false, or auto (when it fits the budget)"
    )
    memory_budget_gb: float | None = Field(None, gt=0, description="RAM budget of preload=auto; none: 25% of RAM")
    random_view: bool = Field(
        True,
        description="train on a random stored view (clip x crop x flip) per video per epoch, drawn from (seed, "
        "epoch, video); false: view 0 only. A one-view store trains on its one view either way",
    )
    labels: Literal["video", "clip"] = Field(
        "video",
        description="training targets: video (the video's labels) or clip (the actions whose time interval "
        "overlaps the sampled clip, PySlowFast's Charades rule; multi-label data with action intervals). "
        "Validation and eval always use video labels",
    )
    standardize: Literal["none", "train"] = Field(
        "none",
        description="none: node features as stored (the paper's); train: z-score each feature dimension with the "
        "mean and std over the valid nodes of the train split (the views training reads), computed once when a run "
        "starts and kept in its checkpoints (a dimension without spread is only centred). Beyond the paper",
    )
    workers: int = Field(2, ge=0, description="DataLoader worker processes reading the store")
    manifest: str | None = Field(
        None, description="manifest for labels and splits; none: the one the store was built from"
    )


class RuntimeSettings(Section):
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")


class DistillSettings(Section):
    loss: str = Field(
        AUTO,
        description="auto (kd, softmax KL, for single-label data; l2, GLIDN Eq. 3, for multi-label data) "
        f"or a registered distillation loss: {', '.join(list_distill_losses())}",
    )
    T: float = Field(10.0, gt=0, description="distillation temperature")
    lambda1: float = Field(1.0, ge=0, description="weight of the CE/BCE term")
    lambda2: float = Field(4.0, ge=0, description="weight of the distillation term")
    dml: bool = Field(False, description="Deep Mutual Learning: two views trained jointly from scratch")

    @field_validator("loss")
    @classmethod
    def _registered_loss(cls, name: str) -> str:
        """Any loss in the registry (hoitool.losses), so adding one needs no change here."""
        if name != AUTO and name not in list_distill_losses():
            raise ValueError(f"must be {AUTO} or a registered distillation loss ({', '.join(list_distill_losses())})")
        return name

    @model_validator(mode="after")
    def _something_to_learn(self) -> DistillSettings:
        """Both weights 0 make the loss zero: nothing would train (a rule across two keys)."""
        if self.lambda1 == 0 and self.lambda2 == 0:
            raise ValueError(
                "distill.lambda1 and distill.lambda2 are both 0: the loss would be zero and nothing would train"
            )
        return self


class MethodSettings(Section):
    name: str = Field(
        DEFAULT_METHOD,
        description=f"training method (hoitool.train.methods): {', '.join(list_methods())}; "
        "docs/method-anticipation.md, docs/method-cl-hoi.md",
    )

    @field_validator("name")
    @classmethod
    def _registered_method(cls, name: str) -> str:
        """Any method in the registry, so adding one needs no change here."""
        if name not in list_methods():
            raise ValueError(f"must be a registered training method ({', '.join(list_methods())})")
        return name


class AnticipationSettings(Section):
    """``--method anticipation`` (docs/method-anticipation.md): Tran et al.'s Eq. 1-5 on node embeddings."""

    lead_time: str | None = Field(
        None, description="lead time tau: seconds (1.5 or 1.5s) or a percentage of the video (80%: sees the first 20%)"
    )
    unlabelled: str | None = Field(
        None, description="file of video ids (one per line) trained on the teacher's soft predictions only"
    )
    loss: Literal["attention", "direct"] = Field(
        "attention", description="attention: L_d of Eq. 3-5 (attentional pooling); direct: the L_direct ablation"
    )
    direction: Literal["both", "student", "teacher"] = Field(
        "both", description="L_d's directions: both (Eq. 3), student (Eq. 4 only), teacher (Eq. 5 only)"
    )
    penalty: Literal["huber", "l2"] = Field("huber", description="norm inside L_d: huber (the paper's) or squared l2")
    delta: float = Field(1.0, gt=0, description="Huber delta")
    alpha: float | None = Field(None, gt=0, description="attentional pooling sharpness; none: 1/sqrt(d)")
    lam: float = Field(1.0, ge=0, description="lambda of Eq. 2, the weight of L_d")
    reduction: Literal["sum", "mean"] = Field(
        "mean", description="L_d over the query nodes: mean (independent of their number) or sum (the paper's)"
    )
    T: float = Field(1.0, gt=0, description="temperature of the soft-prediction loss on unlabelled videos")
    at: Literal["end", "events"] = Field(
        "end",
        description="where t lies: end (the video's last frame; the teacher's stored outputs and embeddings) or "
        "events (the end of each annotated action/segment/turn, one drawn per video and epoch; every event "
        "scored; the teacher's best.pt run online on the clip cut at t)",
    )
    labels: Literal["at_t", "video"] = Field(
        "at_t",
        description="at_t: the label at t where the manifest has times (Charades' action intervals, segments "
        "named by class); video: the video's labels",
    )


class ClHoiSettings(Section):
    """``--method cl_hoi`` (docs/method-cl-hoi.md): contrastive distillation from a VLM's text."""

    vlm_import: str | None = Field(None, description="JSON-lines captions/triplets of each video (docs/vlm-import.md)")
    text_encoder: str = Field("tiny:32", description="tiny[:DIM], open_clip:MODEL:WEIGHTS, hf:DIR or file:EMB.npz")
    text_embeddings: str | None = Field(
        None, description="text-embeddings cache (.npz), built when missing; none: RUN/text_embeddings.npz"
    )
    template: str = Field("{}", description="text template of every embedded text ({} is the text)")
    boxes: str | None = Field(
        None, description="boxes store with is_person (the pair head's humans); none: the features store's upstream"
    )
    w_ce: float = Field(1.0, ge=0, description="weight of the CE/BCE term (on the labels, or the teacher's)")
    w_context: float = Field(1.0, ge=0, description="weight of the context InfoNCE (video vs caption)")
    w_i2t: float = Field(1.0, ge=0, description="weight of the image(video)-to-text interaction contrast")
    w_t2i: float = Field(1.0, ge=0, description="weight of the text-to-image(video) interaction contrast")
    w_sr: float = Field(1.0, ge=0, description="weight of the soft-relation BCE on the node pairs")
    t_context: float = Field(0.07, gt=0, description="temperature of the context InfoNCE")
    t_interaction: float = Field(0.07, gt=0, description="temperature of i2t and t2i")
    t_sr: float = Field(0.07, gt=0, description="temperature of the soft-relation scores")
    negatives: int = Field(2, ge=0, description="negative interactions drawn per video (the paper's 2)")
    label_free: bool = Field(False, description="no labels: classes only from the teacher's interactions")
    threshold: float = Field(0.8, ge=-1, le=1, description="label-free: cosine a teacher interaction needs to vote")
    pair_hidden: int = Field(64, ge=1, description="width of the pair head's hidden layer")
    regions: str | None = Field(
        None,
        description="region embeddings (.npz, hoitool text regions) for the soft-relation pseudo-labels; "
        "none: image-level (every valid pair gets each positive)",
    )
    t_pseudo: float = Field(0.1, gt=0, description="temperature of the pseudo-labels' softmax over a video's pairs")


class DualAttentionSettings(Section):
    """``--method dual_attention`` (docs/method-dual-attention.md): Xiao et al.'s dual attention over actions and objects."""

    regions: Literal["nodes", "cells"] = Field(
        "nodes",
        description="what the attention weighs in each frame: nodes (the boxes' features) or cells (the frame "
        "maps of a store made with extract features --frame-maps)",
    )
    temporal: Literal["trn", "mean"] = Field(
        "trn", description="temporal head: trn (multi-scale relations, Eq. 3-4) or mean over frames (Eq. 5)"
    )
    object_slots: int = Field(
        2, ge=1, le=2, description="object classifiers, each with a null label (2: 'something ... something')"
    )
    hidden: int = Field(512, ge=1, description="width of the projected region features (the paper's 512)")
    prior_hidden: int = Field(512, ge=1, description="width of the prior MLPs h^a, h^o")
    attention_dim: int = Field(512, ge=1, description="width inside the tanh attention (Eq. 6-7)")
    head_hidden: int = Field(256, ge=1, description="width of the heads' MLPs (TRN g and h)")
    trn_max_order: int = Field(8, ge=2, description="largest TRN scale (the paper's TRN-8)")
    trn_max_tuples: int = Field(3, ge=1, description="frame tuples per TRN scale (evenly spaced, deterministic)")
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout on the region features")
    first_weight: float = Field(1.0, ge=0, description="weight of the first-stage (prior) terms")
    object_weight: float = Field(1.0, ge=0, description="weight of the object terms")


class TeacherSettings(Section):
    preset: str | None = Field(None, description="named recipe (docs/training.md)")
    method: MethodSettings = Field(default_factory=MethodSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    optim: OptimSettings = Field(default_factory=OptimSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    cl_hoi: ClHoiSettings = Field(default_factory=ClHoiSettings)
    dual_attention: DualAttentionSettings = Field(default_factory=DualAttentionSettings)


class DistillStageSettings(TeacherSettings):
    distill: DistillSettings = Field(default_factory=DistillSettings)
    anticipation: AnticipationSettings = Field(default_factory=AnticipationSettings)
