"""Stage 5: predictions with confidences, COCO mAP, confusion matrices, plots."""
