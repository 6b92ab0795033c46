"""Typed stage settings: defaults in one place, one-line errors naming key, value and what is allowed."""

from __future__ import annotations

import pytest

from hoitool.config import resolve_config
from hoitool.errors import UsageError
from hoitool.settings import option_help, validate
from hoitool.settings.boxes import BoxesSettings
from hoitool.settings.features import FeaturesSettings
from hoitool.settings.prepare import PREPARE_SETTINGS
from hoitool.settings.training import DistillStageSettings, TeacherSettings


@pytest.mark.parametrize(
    "data, message",
    [
        ({"optim": {"lr": "abc"}}, "config key 'optim.lr' = 'abc': must be a valid number"),
        ({"optim": {"lr": -1}}, "config key 'optim.lr' = -1: must be greater than 0"),
        ({"optim": {"name": "rmsprop"}}, "config key 'optim.name' = 'rmsprop': must be 'adam' or 'sgd'"),
        ({"optim": {"lrr": 1}}, "unknown config key 'optim.lrr' (known here: lr, momentum, name, weight_decay)"),
        ({"train": {"epochs": True}}, "config key 'train.epochs' = True: must be a valid integer"),
        ({"train": {"epochs": 2.5}}, "config key 'train.epochs' = 2.5: must be a valid integer"),
        ({"data": {"preload": "yes"}}, "config key 'data.preload' = 'yes': must be a valid boolean or 'auto'"),
        ({"model": {"hidden": 10, "heads": 3}}, "model.hidden (10) must be a multiple of model.heads (3)"),
        ({"optim": 3}, "config key 'optim' = 3: must be a mapping of keys to values (a config section)"),
        ({"distill": {"lambda2": -0.5}}, "config key 'distill.lambda2' = -0.5: must be greater than or equal to 0"),
        ({"train": {"seed": -1}}, "config key 'train.seed' = -1: must be greater than or equal to 0"),
        (
            {"distill": {"lambda1": 0.0, "lambda2": 0.0}},
            "distill.lambda1 and distill.lambda2 are both 0: the loss would be zero and nothing would train",
        ),
    ],
)
def test_bad_values_are_one_line_naming_key_value_and_rule(data, message):
    with pytest.raises(UsageError) as error:
        validate(DistillStageSettings, data)
    assert str(error.value) == message


def test_resolve_config_validates_after_every_layer(tmp_path):
    config_file = tmp_path / "train.yaml"
    config_file.write_text("optim:\n  lr: 0.5\n")
    resolved = resolve_config(TeacherSettings, config_file, {"train.epochs": 3}, ["optim.name=sgd"])
    assert resolved["optim"] == {"name": "sgd", "lr": 0.5, "momentum": 0.9, "weight_decay": 0.0}
    assert resolved["train"]["epochs"] == 3 and resolved["model"]["view"] == "global"
    with pytest.raises(UsageError, match="'train.batch_size' = 0: must be greater than or equal to 1"):
        resolve_config(TeacherSettings, None, None, ["train.batch_size=0"])
    with pytest.raises(UsageError, match="unknown config key 'frames'"):
        resolve_config(FeaturesSettings, None, None, ["frames=abc"])
    with pytest.raises(UsageError, match="'frames' = 'abc': must be a valid integer"):
        resolve_config(BoxesSettings, None, None, ["frames=abc"])


def test_every_setting_is_described_and_its_help_shows_the_default():
    for schema in (BoxesSettings, FeaturesSettings, DistillStageSettings, *PREPARE_SETTINGS.values()):
        for key, _value in _leaves(schema().model_dump()):
            text = option_help(schema, key)
            assert text.split(" [config:")[0], f"{schema.__name__}.{key} has no description"
            assert f"config: {key};" in text
    assert option_help(TeacherSettings, "optim.lr") == "initial learning rate [config: optim.lr; default: 0.001]"
    assert option_help(BoxesSettings, "model.weights").endswith("default: none]")


def test_detector_and_rpn_keep_their_own_nms_default():
    """One home of defaults: the box models' per-source NMS (0.7 rpn, 0.5 detector) is not overridden by the stage."""
    from hoitool.boxes.models import DEFAULT_NMS_IOU

    assert BoxesSettings().model.nms_iou is None
    assert DEFAULT_NMS_IOU == {"rpn": 0.7, "detector": 0.5}


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
