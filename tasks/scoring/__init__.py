"""Scoring a detector, shared by training (checkpoint selection) and evaluation: `<OD>` generation
with confidences, one parser, COCO mAP, confusion matrices."""
