"""Stage 2: per-image work, memoized by content: safe decode, EXIF, grayscale policy, box fitting."""
