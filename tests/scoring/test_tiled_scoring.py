"""Dense images scored through tiles: a detector that answers each tile perfectly (what of each
defect the tile sees, however little) scores mAP50 and mAP75 1 on the whole image, each defect once, no
output cut short, although every defect is wider than the tiles' overlap and many are cut by
2 or 3 tiles; asked for the whole image at once, its answer does not fit the decoder and is
counted as truncated."""

from types import SimpleNamespace

import pytest
from PIL import Image

from tasks.core.records import Box
from tasks.dataset.loc_tokens import od_target
from tasks.images.tiles import boxes_in_window, tile_windows
from tasks.scoring.coco import coco_detections, coco_evaluate, coco_ground_truth, dense_max_dets
from tasks.scoring.generation import predict_batch, predict_sliced
from tests.support import scripted_step_scores

LABEL = "solder_bridge"


class ScriptedByCall:
    """`generate` answers each image of each call with the next scripted output, cut at
    `max_new_tokens` with a forced `</s>` last, as BART's generation config does."""

    def __init__(self, outputs: list[list[int]], eos: int, vocab_size: int):
        import torch

        self.outputs, self.eos, self.weight = list(outputs), eos, torch.zeros(1)
        self.vocab_size = vocab_size

    def parameters(self):
        yield self.weight

    def generate(self, pixel_values, max_new_tokens, **kwargs):
        import torch

        batch = [self.outputs.pop(0) for _ in range(pixel_values.shape[0])]
        batch = [ids if len(ids) <= max_new_tokens else ids[:max_new_tokens - 1] + [self.eos]
                 for ids in batch]
        width = max(map(len, batch))
        sequences = torch.tensor([[2] + ids + [1] * (width - len(ids)) for ids in batch])
        return SimpleNamespace(sequences=sequences, scores=scripted_step_scores(
            sequences[:, 1:], torch.full((len(batch), width), -0.1), self.vocab_size))

    def compute_transition_scores(self, sequences, scores, beam_indices, normalize_logits):
        import torch

        return torch.full((sequences.shape[0], sequences.shape[1] - 1), -0.1)


@pytest.fixture(scope="module")
def processor(tiny_florence):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_florence)


def dense_truth() -> list[Box]:
    """180 defects on 400 px, all wider than the 26 px overlap of 128 px tiles (0.2): above,
    20 rows of 5 horizontal bars 76 px long; below, 40 columns of 2 vertical bars 96 px long."""
    across = [Box(x1=2 + 80 * k, y1=2 + 10 * row, x2=78 + 80 * k, y2=8 + 10 * row, label=LABEL)
              for row in range(20) for k in range(5)]
    down = [Box(x1=2 + 10 * col, y1=202 + 100 * k, x2=8 + 10 * col, y2=298 + 100 * k, label=LABEL)
            for col in range(40) for k in range(2)]
    return across + down


def answer(processor, boxes: list[Box], width: int, height: int) -> list[int]:
    return processor.tokenizer(od_target(boxes, width, height) + "</s>",
                               add_special_tokens=False).input_ids


def coco_map(truth: list[Box], boxes: list[Box], scores: list[float]) -> dict:
    gt = coco_ground_truth([("dense", 400, 400, truth)], [LABEL])
    dt = coco_detections([(1, boxes, scores)], [LABEL])
    return coco_evaluate(gt, dt, max_dets=dense_max_dets(gt))


def test_a_dense_image_scored_through_tiles_is_whole_and_complete(processor):
    truth, image = dense_truth(), Image.new("RGB", (400, 400))
    windows = tile_windows(400, 400, 128, 0.2)
    outputs = [answer(processor, boxes_in_window(truth, window, 1e-6, 1.0), 128, 128)
               for window in windows]
    model = ScriptedByCall(outputs, processor.tokenizer.eos_token_id, len(processor.tokenizer))
    prediction = predict_sliced(model, processor, image, {LABEL}, 128, 0.2,
                                max_new_tokens=max(map(len, outputs)) + 8, batch_size=4)
    assert not prediction.truncated and prediction.parse_failures == 0
    assert len(prediction.boxes) == len(truth)  # each defect once, however many tiles saw it
    metrics = coco_map(truth, prediction.boxes, prediction.scores)
    assert metrics["map50"] == pytest.approx(1.0) and metrics["map75"] == pytest.approx(1.0)


def test_the_same_image_in_one_generation_is_cut_at_the_decoder_and_counted(processor):
    truth = dense_truth()
    whole = answer(processor, truth, 400, 400)
    assert len(whole) > 1024
    model = ScriptedByCall([whole], processor.tokenizer.eos_token_id, len(processor.tokenizer))
    [prediction] = predict_batch(model, processor, [Image.new("RGB", (400, 400))], {LABEL},
                                 max_new_tokens=1024)
    assert prediction.truncated
    assert len(prediction.boxes) < len(truth)
    assert coco_map(truth, prediction.boxes, prediction.scores)["map50"] < 0.9
