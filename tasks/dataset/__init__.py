"""Stage 3: split, flipped copies, Florence-2 loc targets, publication in the Hub layout, the report."""
