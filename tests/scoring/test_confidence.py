"""A box's confidence asks "this corner, to half a percent of the side?": the probability of the
location bins around the one written, not of that single bin out of 1000."""

import math

import pytest
import torch

from tasks.scoring.generation import LOC_TOLERANCE, loc_window_logprobs

VOCAB = 1010  # ids 0..9 are words, 10..1009 the location bins 0..999
LOC_IDS = list(range(10, 1010))


def spread_over(bins: dict[int, float]) -> torch.Tensor:
    probs = torch.full((VOCAB,), 1e-30)
    for q, p in bins.items():
        probs[10 + q] = p
    return probs.log()


def test_a_coordinate_spread_over_neighbouring_bins_counts_as_sure():
    # Step 0 writes bin 500, which alone has 0.2: the bins 498..502 hold all of it.
    # Step 1 writes a word: no window there. Step 2 writes bin 0 at the edge (0..5 count).
    step0 = spread_over({q: 0.2 for q in range(498, 503)})
    step1 = torch.full((VOCAB,), -30.0)
    step1[3] = 0.0
    step2 = spread_over({0: 0.5, LOC_TOLERANCE: 0.25, LOC_TOLERANCE + 1: 0.25})
    sequences = torch.tensor([[2, 10 + 500, 3, 10 + 0]])
    result = loc_window_logprobs(sequences, (step0[None], step1[None], step2[None]), None, LOC_IDS)
    assert result[0, 0].exp().item() == pytest.approx(1.0, abs=1e-5)
    assert math.isnan(result[0, 1].item())
    assert result[0, 2].exp().item() == pytest.approx(0.75, abs=1e-5)  # bin 6 is out of reach


def test_with_beams_each_row_reads_the_scores_of_the_beam_it_came_from():
    sure, unsure = spread_over({100: 1.0}), spread_over({100: 0.1, 900: 0.9})
    # Two beams for one image: the kept sequence came from beam 1 (the sure one).
    scores = (torch.stack([unsure, sure]),)
    result = loc_window_logprobs(torch.tensor([[2, 110]]), scores, torch.tensor([[1]]), LOC_IDS)
    assert result[0, 0].exp().item() == pytest.approx(1.0, abs=1e-5)
    finished = loc_window_logprobs(torch.tensor([[2, 110]]), scores, torch.tensor([[-1]]), LOC_IDS)
    assert math.isnan(finished[0, 0].item())  # a finished beam's padding step
