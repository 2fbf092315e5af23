"""Stage 6: the nightly loop: MLflow registry, champion vs challenger, one run per work dir."""
