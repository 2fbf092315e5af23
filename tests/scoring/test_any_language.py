"""Class names in any language survive target -> tokenizer -> generation -> our parser, with the
tiny model's byte-level tokenizer inside the real `Florence2Processor` class; and an output cut at
`max_new_tokens` is counted, not taken for a complete answer."""

import pytest
from PIL import Image

from tasks.core.records import Box
from tasks.dataset.loc_tokens import od_target
from tasks.scoring.generation import hit_the_limit, new_token_budget, predict_batch
from tests.scoring.test_coco import ScriptedGenerator

NAMES = ["傷", "欠け", "défaut", "трещина", "rolled-in_scale"]


@pytest.fixture(scope="module")
def processor(tiny_florence):
    from transformers import AutoProcessor

    loaded = AutoProcessor.from_pretrained(tiny_florence)
    assert type(loaded).__name__ == "Florence2Processor"
    return loaded


def boxes_named(names: list[str]) -> list[Box]:
    return [Box(x1=10 * n, y1=10 * n, x2=10 * n + 8, y2=10 * n + 8, label=name)
            for n, name in enumerate(names)]


def test_the_tokenizer_spells_every_name_and_decodes_it_back(processor):
    target = od_target(boxes_named(NAMES), 100, 100)
    ids = processor.tokenizer(target, add_special_tokens=False).input_ids
    assert processor.tokenizer.unk_token_id not in ids
    assert processor.tokenizer.decode(ids) == target


def test_names_in_any_language_come_back_from_prediction_as_the_same_names(processor):
    target = od_target(boxes_named(NAMES), 100, 100)
    generated = processor.tokenizer(target + "</s>", add_special_tokens=False).input_ids
    # As `generate` returns it: the decoder start token, then one score per generated token.
    model = ScriptedGenerator([2] + generated, [-0.1] * len(generated), len(processor.tokenizer))
    [prediction] = predict_batch(model, processor, [Image.new("RGB", (100, 100))], set(NAMES),
                                 max_new_tokens=len(generated) + 5)
    assert [box.label for box in prediction.boxes] == NAMES
    assert prediction.unknown_labels == [] and prediction.parse_failures == 0
    assert not prediction.truncated
    # The processor's own parser keeps ASCII only: it would lose or garble these classes.
    parsed = processor.post_process_generation(processor.tokenizer.decode(generated), task="<OD>",
                                               image_size=(100, 100))["<OD>"]["labels"]
    assert parsed != NAMES


def test_an_output_that_fills_max_new_tokens_is_counted_as_truncated(processor):
    eos = processor.tokenizer.eos_token_id
    assert hit_the_limit([5, 6, 7, eos], eos, max_new_tokens=4)  # a forced </s> in the last place
    assert hit_the_limit([5, 6, 7, 8], eos, max_new_tokens=4)
    assert not hit_the_limit([5, eos, 1, 1], eos, max_new_tokens=4)
    target = od_target(boxes_named(["spot"] * 6), 100, 100)
    generated = processor.tokenizer(target, add_special_tokens=False).input_ids[:11] + [eos]
    model = ScriptedGenerator([2] + generated, [0.0] * len(generated), len(processor.tokenizer))
    [prediction] = predict_batch(model, processor, [Image.new("RGB", (100, 100))], {"spot"},
                                 max_new_tokens=12)
    assert prediction.truncated and len(prediction.boxes) == 2


def test_max_new_tokens_follows_the_longest_target_and_never_passes_the_decoder(processor):
    short = od_target(boxes_named(["spot"]), 100, 100)
    long = od_target(boxes_named(["spot"] * 60), 100, 100)
    assert new_token_budget([short], processor.tokenizer) < new_token_budget(
        [short, long], processor.tokenizer)
    assert new_token_budget([long] * 2, processor.tokenizer) >= len(
        processor.tokenizer(long).input_ids)
    assert new_token_budget([long * 10], processor.tokenizer) == 1024
