"""Source ``rpn``: Faster R-CNN's class-agnostic region proposals (as GLIDN and STRG use on Charades)."""

from hoitool.boxes.registry import register_box_source
from hoitool.boxes.sources.common import ModelSource

register_box_source(ModelSource("rpn", "Faster R-CNN region proposals, class-agnostic"))
