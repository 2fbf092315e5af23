"""Stage 5: the evaluate step (scores from `scoring/`), its metrics.json, PNGs and artifacts."""
