"""Building the base: its batches are made ahead on a thread, and are exactly a plain loop's."""

import random

from tasks.training.pretrain import made_ahead


def test_made_ahead_yields_what_a_plain_loop_makes_in_the_same_order():
    plain_rng, ahead_rng = random.Random(3), random.Random(3)
    plain = [[plain_rng.random() for _ in range(4)] for _ in range(50)]
    assert list(made_ahead(lambda: [ahead_rng.random() for _ in range(4)], 50)) == plain
    assert list(made_ahead(lambda: 1, 0)) == [] and list(made_ahead(lambda: 1, 1)) == [1]
