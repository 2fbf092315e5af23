"""Batched `<OD>` generation -> boxes with real confidences.

Each output is parsed once, by one parser of our own (`boxes_from_tokens`) that walks the
generated tokens and keeps each box's label, coordinates and confidence together: the
processor's `post_process_generation` would drop non-ASCII characters from labels and, paired
with a second parse by position, could hand a box another phrase's label.

The confidence of a box is exp(mean log-probability) over the tokens that generated it: its
label's tokens, and for each of its four coordinates the probability the model gave to the
location bins within `LOC_TOLERANCE` of the one it wrote. (With 1000 bins a sure model still
spreads a coordinate over neighbouring bins: the chosen bin's own probability put a perfect
detector's boxes at ~0.03, useless for a threshold; "this corner, to half a percent of the
side" is the question a threshold asks.) Coordinates are the exact bin centres of the location
tokens. Outputs that do not parse and labels outside the class list are counted, never
silently dropped.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from tasks.core.records import Box
from tasks.dataset.loc_tokens import BINS, OD_PROMPT, decode_box
from tasks.images.tiles import merge_tile_boxes, tile_windows

LOC = re.compile(r"^<loc_(\d+)>$")
LOC_TOKENS = [f"<loc_{q}>" for q in range(BINS)]


@dataclass
class Prediction:
    boxes: list[Box] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    text: str = ""
    parse_failures: int = 0
    unknown_labels: list[str] = field(default_factory=list)
    truncated: bool = False  # generation hit max_new_tokens before `</s>`: boxes may be missing


DECODER_POSITIONS = 1024  # Florence-2's BART decoder
LOC_TOLERANCE = 5  # bins either side of a coordinate: half a percent of the image's side
DEFAULT_THRESHOLD = 0.25  # the confidence a box needs to be drawn or written for LabelImg


def loc_window_logprobs(sequences, step_scores, beam_indices, loc_ids: list[int],
                        tolerance: int = LOC_TOLERANCE):
    """[rows, steps] log-probabilities: where the generated token is a location bin, the log of
    the probability its step gave to the bins within `tolerance` of it (NaN elsewhere).
    `step_scores` are generate's per-step scores (one [rows * beams, vocab] tensor a step)."""
    import torch

    steps = len(step_scores)
    tokens = sequences[:, -steps:]
    rows = tokens.shape[0]
    loc = torch.tensor(loc_ids, device=tokens.device)
    bin_of = torch.full((step_scores[0].shape[-1],), -1, device=tokens.device)
    bin_of[loc] = torch.arange(len(loc_ids), device=tokens.device)
    result = torch.full((rows, steps), float("nan"))
    for step, scores in enumerate(step_scores):
        bins = bin_of[tokens[:, step]]
        source = beam_indices[:, step] if beam_indices is not None else torch.arange(
            rows, device=tokens.device)
        wanted = (bins >= 0) & (source >= 0)  # a finished beam's steps are padding (-1)
        if not wanted.any():
            continue
        probs = scores[source.clamp(min=0)].float().log_softmax(-1)[:, loc].exp()
        below = torch.nn.functional.pad(probs.cumsum(-1), (1, 0))  # below[i] = sum(probs[:i])
        low = (bins - tolerance).clamp(0, len(loc_ids))[:, None]
        high = (bins + tolerance + 1).clamp(0, len(loc_ids))[:, None]
        mass = (below.gather(1, high) - below.gather(1, low))[:, 0].clamp(min=1e-12).log()
        result[wanted.cpu(), step] = mass[wanted].cpu()
    return result


def new_token_budget(targets, tokenizer, cap: int = DECODER_POSITIONS) -> int:
    """`max_new_tokens` sized from the data: the longest target (in this tokenizer's tokens) and
    a quarter more, for a model that says a little more than the truth; never past the decoder."""
    longest = max((len(tokenizer(target).input_ids) for target in targets if target), default=64)
    return min(cap, longest + longest // 4 + 8)


def _piece_text(pieces: list[str]) -> str:
    return "".join(pieces).replace("Ġ", " ").strip()  # byte-level BPE marks spaces with Ġ


def boxes_from_tokens(tokens: list[str], logprobs: list[float], width: int, height: int,
                      to_text=_piece_text) -> tuple[list[tuple[str, Box, float]], int]:
    """Walk generated tokens: label pieces, then groups of four loc tokens. Returns
    ((label, box, confidence) per box, number of unparseable fragments: loc runs that are not a
    multiple of four or hold a bin outside 0..999, boxes without a label, a label without a
    box)."""
    found: list[tuple[str, Box, float]] = []
    failures = 0
    pieces: list[str] = []
    piece_logprobs: list[float] = []
    locs: list[tuple[int, float]] = []

    def close() -> None:
        nonlocal failures
        label = to_text(pieces)
        if len(locs) % 4 or not label or any(q >= BINS for q, _ in locs):
            failures += 1
            return
        for i in range(0, len(locs), 4):
            quad = locs[i:i + 4]
            mean = (sum(lp for _, lp in quad) + sum(piece_logprobs)) / (4 + len(piece_logprobs))
            box = decode_box(tuple(q for q, _ in quad), width, height, label)
            found.append((label, box, math.exp(mean)))

    for token, logprob in zip(tokens, logprobs, strict=True):
        if token in ("<s>", "</s>", "<pad>"):
            continue
        match = LOC.match(token)
        if match:
            locs.append((int(match.group(1)), logprob))
            continue
        if locs:  # a new label starts: the previous label's boxes are complete
            close()
            pieces, piece_logprobs, locs = [], [], []
        pieces.append(token)
        piece_logprobs.append(logprob)
    if locs:
        close()
    elif to_text(pieces):
        failures += 1  # a label with no box after it
    return found, failures


def hit_the_limit(generated: list[int], eos: int, max_new_tokens: int) -> bool:
    """Whether generation stopped at `max_new_tokens` rather than by saying `</s>`. (BART's
    `forced_eos_token_id` writes `</s>` into the last position, so a `</s>` there counts too.)"""
    return eos not in generated or generated.index(eos) + 1 >= max_new_tokens


def predict_batch(model, processor, images: list, labels: set[str] | None, num_beams: int = 1,
                  max_new_tokens: int = 256) -> list[Prediction]:
    """Generate `<OD>` for a batch of PIL images; one Prediction per image. Boxes with a label
    outside `labels` are counted as unknown, not kept (`None`: every label is kept)."""
    import torch

    inputs = processor(text=[OD_PROMPT] * len(images), images=[i.convert("RGB") for i in images],
                       return_tensors="pt", padding=True)
    weights = next(model.parameters())
    inputs = {k: v.to(weights.device, dtype=weights.dtype) if v.is_floating_point()
              else v.to(weights.device) for k, v in inputs.items()}
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=num_beams,
                             do_sample=False, output_scores=True, return_dict_in_generate=True)
    beams = getattr(out, "beam_indices", None)
    transition = model.compute_transition_scores(out.sequences, out.scores, beams,
                                                 normalize_logits=True).float().cpu()
    tokenizer = processor.tokenizer
    windows = loc_window_logprobs(out.sequences, out.scores, beams,
                                  tokenizer.convert_tokens_to_ids(LOC_TOKENS))
    token_logprobs = torch.where(windows.isnan(), transition, windows)
    results = []
    for row, image in enumerate(images):
        generated = out.sequences[row, -transition.shape[1]:]  # the tokens the scores belong to
        tokens = tokenizer.convert_ids_to_tokens(generated.tolist())
        logprobs = token_logprobs[row].tolist()
        found, failures = boxes_from_tokens(tokens, logprobs, image.width, image.height,
                                            lambda pieces: tokenizer.convert_tokens_to_string(
                                                pieces).strip())
        prediction = Prediction(text=tokenizer.decode(generated, skip_special_tokens=False),
                                parse_failures=failures,
                                truncated=hit_the_limit(generated.tolist(), tokenizer.eos_token_id,
                                                        max_new_tokens))
        for label, box, confidence in found:
            if labels is not None and label not in labels:
                prediction.unknown_labels.append(label)
                continue
            prediction.boxes.append(box)
            prediction.scores.append(confidence)
        results.append(prediction)
    return results


def predict_sliced(model, processor, image, labels: set[str] | None, size: int, overlap: float,
                   num_beams: int = 1, max_new_tokens: int = 256,
                   batch_size: int = 8) -> Prediction:
    """`<OD>` on overlapping tiles of one whole image (as prepare cut the training images), the
    boxes moved back and merged across tiles: one Prediction for the whole image."""
    windows = tile_windows(image.width, image.height, size, overlap)
    crops = [image.crop((x, y, x + w, y + h)) for x, y, w, h in windows]
    per_tile = []
    for start in range(0, len(crops), batch_size):
        per_tile += predict_batch(model, processor, crops[start:start + batch_size], labels,
                                  num_beams, max_new_tokens)
    boxes, scores = merge_tile_boxes([(window, p.boxes, p.scores)
                                      for window, p in zip(windows, per_tile, strict=True)])
    return Prediction(boxes=boxes, scores=scores, text=" | ".join(p.text for p in per_tile),
                      parse_failures=sum(p.parse_failures for p in per_tile),
                      unknown_labels=[label for p in per_tile for label in p.unknown_labels],
                      truncated=any(p.truncated for p in per_tile))
