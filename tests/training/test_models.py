"""Tiny Florence-2: built offline, saved, and loaded back through the real `from_pretrained` path."""

import random
import shutil

import pytest
import torch
from PIL import Image

from tasks.core.records import Box
from tasks.dataset.loc_tokens import decode_like_processor, encode_coord, od_target
from tasks.scoring.generation import boxes_from_tokens
from tasks.training.models import ModelUnavailable, load_detector


def test_tiny_florence_round_trips_through_from_pretrained(tiny_florence):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_florence)
    model = AutoModelForImageTextToText.from_pretrained(tiny_florence)
    assert type(model).__name__ == "Florence2ForConditionalGeneration"
    assert type(processor).__name__ == "Florence2Processor"
    assert model.config.model_type == "florence2"
    tokenizer = processor.tokenizer
    # Every location token is one token, and targets tokenize to label pieces + loc tokens.
    ids = tokenizer.convert_tokens_to_ids([f"<loc_{i}>" for i in range(1000)])
    assert len(set(ids)) == 1000 and tokenizer.unk_token_id not in ids
    inputs = processor(text=["<OD>"], images=[Image.new("RGB", (90, 60), (100, 120, 140))],
                       return_tensors="pt")
    image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert image_tokens == processor.num_image_tokens
    labels = tokenizer(["spot<loc_1><loc_2><loc_30><loc_40>"], return_tensors="pt").input_ids
    with torch.no_grad():
        out = model(**inputs, labels=labels)
        features = model.get_image_features(pixel_values=inputs["pixel_values"])
    features = features.pooler_output if hasattr(features, "pooler_output") else features
    assert features.shape[1] == processor.num_image_tokens  # the processor's count is the model's
    assert torch.isfinite(out.loss)
    assert "random weights" in (tiny_florence / "README.md").read_text()


def test_a_local_folder_in_the_checkpoint_layout_loads_like_a_hub_id(tiny_florence, tmp_path):
    # The real-checkpoint path: nothing tiny-specific, just a folder that from_pretrained reads.
    folder = shutil.copytree(tiny_florence, tmp_path / "Florence-2-local")
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= {
        p.name for p in folder.iterdir()}
    processor, model = load_detector(str(folder))
    assert type(model).__name__ == "Florence2ForConditionalGeneration"
    reference = load_detector(str(tiny_florence))[1]
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name


def test_unreachable_checkpoint_says_what_to_do(tmp_path):
    with pytest.raises(ModelUnavailable) as error:
        load_detector("florence-community/Florence-2-base")
    message = str(error.value)
    assert "hf download florence-community/Florence-2-base" in message and "--model tiny" in message
    with pytest.raises(ModelUnavailable):
        load_detector(str(tmp_path / "no-such-folder"))


def test_codec_agrees_with_the_processors_quantizer_and_parser(tiny_florence):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_florence)
    rng = random.Random(0)
    for _ in range(300):
        width, height = rng.randint(1, 5000), rng.randint(1, 5000)
        x1, x2 = sorted(rng.uniform(0, width) for _ in range(2))
        y1, y2 = sorted(rng.uniform(0, height) for _ in range(2))
        ours = [encode_coord(x1, width), encode_coord(y1, height), encode_coord(x2, width),
                encode_coord(y2, height)]
        theirs = processor.post_processor.quantize(
            torch.tensor([[x1, y1, x2, y2]], dtype=torch.float64), (width, height))[0].tolist()
        assert ours == theirs
        text = od_target([Box(x1=x1, y1=y1, x2=x2, y2=y2, label="dent")], width, height)
        parsed = processor.post_process_generation(text=f"</s><s>{text}</s>", task="<OD>",
                                                   image_size=(width, height))["<OD>"]
        assert parsed["labels"] == ["dent"]
        expected = [decode_like_processor(q, s) for q, s in zip(ours, (width, height, width, height),
                                                                strict=True)]
        assert parsed["bboxes"][0] == expected
        tokens = processor.tokenizer.tokenize(text)
        found, failures = boxes_from_tokens(tokens, [0.0] * len(tokens), width, height,
                                            processor.tokenizer.convert_tokens_to_string)
        box = found[0][1]
        assert failures == 0 and [int(v) for v in (box.x1, box.y1, box.x2, box.y2)] == expected


def test_default_lora_targets_reach_both_towers_of_the_real_architecture(tiny_florence):
    from transformers import AutoModelForImageTextToText

    from tasks.core.config import ModelConfig
    from tasks.training.detector import wrap_with_lora

    model = wrap_with_lora(AutoModelForImageTextToText.from_pretrained(tiny_florence), ModelConfig())
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in model.named_modules()
               if name.endswith(".lora_A")}
    vision = {name.rsplit(".", 1)[-1] for name in adapted if "vision_tower" in name}
    language = {name.rsplit(".", 1)[-1] for name in adapted if "language_model" in name}
    assert vision == {"qkv", "proj", "fc1", "fc2"}  # DaViT: fused attention, output, MLP
    assert language == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}  # BART


def test_inference_goes_to_the_gpu_in_bf16_when_there_is_one(monkeypatch):
    from tasks.training.models import inference_ready

    moves = []

    class Model:
        def eval(self):
            return self

        def to(self, **kwargs):
            moves.append(kwargs)
            return self

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    inference_ready(Model())
    assert moves == []  # no GPU: stays on the CPU in fp32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    inference_ready(Model())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    inference_ready(Model())
    assert moves == [{"device": "cuda", "dtype": torch.bfloat16},
                     {"device": "cuda", "dtype": torch.float32}]


def test_prediction_runs_on_a_real_gpu(tiny_florence):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine: the GPU prediction path is not exercised")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from tasks.scoring.generation import predict_batch
    from tasks.training.models import inference_ready

    processor = AutoProcessor.from_pretrained(tiny_florence)
    model = inference_ready(AutoModelForImageTextToText.from_pretrained(tiny_florence))
    assert next(model.parameters()).is_cuda
    [prediction] = predict_batch(model, processor, [Image.new("RGB", (64, 64), 80)], {"spot"},
                                 max_new_tokens=16)
    assert prediction.text


@pytest.mark.parametrize("num_beams", [1, 2])
def test_generation_scores_are_the_log_probabilities_of_the_tokens_they_belong_to(tiny_florence,
                                                                                  num_beams):
    """The confidence path: generate -> compute_transition_scores -> the tokens they are aligned
    with in predict_batch, checked against a teacher-forced forward pass of the same model."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from tasks.scoring.generation import predict_batch

    processor = AutoProcessor.from_pretrained(tiny_florence)
    model = AutoModelForImageTextToText.from_pretrained(tiny_florence).eval()
    image = Image.new("RGB", (64, 64), (90, 60, 30))
    inputs = processor(text=["<OD>"], images=[image], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, num_beams=num_beams, do_sample=False,
                             output_scores=True, return_dict_in_generate=True)
        scores = model.compute_transition_scores(out.sequences, out.scores,
                                                 getattr(out, "beam_indices", None),
                                                 normalize_logits=True)[0]
        generated = out.sequences[0, -scores.shape[0]:]  # the alignment predict_batch uses
        decoder_input = out.sequences[:, :-1][:, -scores.shape[0]:]
        logits = model(**inputs, decoder_input_ids=torch.cat(
            [out.sequences[:, :1], generated[None, :-1]], dim=1)).logits[0]
    forced = torch.log_softmax(logits.float(), -1).gather(1, generated[:, None])[:, 0]
    assert decoder_input.shape[1] == scores.shape[0]
    if len(generated) == 12 and generated[-1] == model.generation_config.forced_eos_token_id:
        # At max_new_tokens the end token is forced (log-probability 0), not the model's choice.
        assert scores[-1] == 0
        scores, forced = scores[:-1], forced[:-1]
    assert torch.allclose(scores.float(), forced, atol=1e-4), (scores, forced)
    [prediction] = predict_batch(model, processor, [image], {"spot"}, num_beams=num_beams,
                                 max_new_tokens=12)
    assert prediction.text == processor.tokenizer.decode(generated, skip_special_tokens=False)


def test_a_loaded_model_never_swaps_in_kernels_from_the_hub(tiny_florence):
    # transformers downloads Hub kernels when a model on a GPU changes mode: offline, the first
    # evaluation of a training crashed on the GPU machine. Loading through defectflow turns them
    # off (the user may turn them on with USE_HUB_KERNELS=1).
    import os

    _, model = load_detector(str(tiny_florence))
    assert os.environ["USE_HUB_KERNELS"] == "0" and model.use_kernels is False
