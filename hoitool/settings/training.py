"""``train-teacher`` and ``distill``: every setting and its default (presets: hoitool.train.presets)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from hoitool.losses import AUTO, list_distill_losses
from hoitool.settings.base import Section

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


class DataSettings(Section):
    preload: bool | Literal["auto"] = Field(
        "auto", description="read the store into RAM: true, false, or auto (when it fits the budget)"
    )
    memory_budget_gb: float | None = Field(None, gt=0, description="RAM budget of preload=auto; none: 25% of RAM")
    random_view: bool = Field(False, description="train on a random stored view per video per epoch")
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


class TeacherSettings(Section):
    preset: str | None = Field(None, description="named recipe (docs/training.md)")
    model: ModelSettings = Field(default_factory=ModelSettings)
    optim: OptimSettings = Field(default_factory=OptimSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)


class DistillStageSettings(TeacherSettings):
    distill: DistillSettings = Field(default_factory=DistillSettings)
