"""Box sources (one registry, ``hoitool.boxes.registry``; one module each in ``hoitool.boxes.sources``: rpn, detector,
dataset, import), the Faster R-CNN box models (``models``) and the boxes JSON-lines format (``jsonl``)."""
