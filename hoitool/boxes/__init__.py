"""Box sources: RPN proposals, detector detections, dataset boxes, imported detector output."""
