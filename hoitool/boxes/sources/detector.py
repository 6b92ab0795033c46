"""Source ``detector``: Faster R-CNN's COCO detections, with classes and ``is_person``."""

from hoitool.boxes.registry import register_box_source
from hoitool.boxes.sources.common import ModelSource

register_box_source(ModelSource("detector", "Faster R-CNN detections with classes"))
