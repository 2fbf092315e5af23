"""Stage 1: list a source safely and turn its annotations (VOC, COCO) into records."""
