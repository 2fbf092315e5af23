"""Prep step by step against each step's own floor: what remains per image after caching, on a
cold run (an empty home) of NEU-DET replicated to 1,000 images, in this process, without Prefect.

    python -m bench.step_floors [--scale 1000]

Floors, each the least a step of its kind must do, on as many processes as prep has cores:
- ingest: read every XML and parse it with defusedxml (no checks, no records);
- images (shards + grayscale + store): Pillow decodes every source once and encodes it once;
- flips: Pillow encodes the flipped copy of every training image once (decoded beforehand);
- split, budget, targets, each a pass over every record: read the final manifest's lines and
  parse each once (pydantic-core's JSON parser, the one the steps use);
- publish: pyarrow writes the published rows (image bytes and targets, read beforehand) to one
  parquet file.
Writes the "Prep step by step" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

from bench.results import measured_at, write_section

REPO = Path(__file__).resolve().parents[1]


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _flip_encode(data: bytes) -> int:
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return len(buffer.getvalue())


def floors(source: Path, home: Path, dataset: Path, cores: int) -> dict[str, float]:
    import defusedxml.ElementTree as SafeET
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pydantic_core import from_json

    from bench.baselines import floor_workers, pillow_limit, training_images

    xmls = sorted((source / "annotations").glob("*.xml"))
    images = sorted((source / "images").glob("*.jpg"))
    train = sorted(training_images(images))
    train_bytes = [path.read_bytes() for path in train]
    manifest = max((home / "manifests").rglob("*.jsonl"), key=lambda p: p.stat().st_size)
    table = pq.read_table(sorted((dataset / "data").glob("*.parquet")),
                          columns=["image", "target"])
    pool = floor_workers(cores)
    out = Path(tempfile.mkdtemp(prefix="floor-")) / "rows.parquet"
    return {
        "ingest": timed(lambda: [SafeET.fromstring(p.read_bytes()) for p in xmls]),
        "images": timed(lambda: pillow_limit(images, cores)),
        "flips": timed(lambda: sum(pool.map(_flip_encode, train_bytes,
                                            chunksize=max(1, len(train) // (8 * cores))))),
        "a record pass": timed(lambda: [from_json(line) for line in
                                        manifest.read_text(encoding="utf-8").splitlines()]),
        "publish": timed(lambda: pq.write_table(pa.table(table.columns, names=table.column_names),
                                                out)),
    }


def main() -> None:
    from bench.data import config_for, replicate_neu_det
    from tasks.core import progress
    from tasks.core.config import load_config
    from tasks.dataset.local_run import prepare_steps
    from tasks.images.workers import allow

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=REPO / "work" / "bench")
    args = parser.parse_args()
    allow()
    progress.enabled = False
    commit, cores = measured_at(), os.cpu_count() or 1
    source = replicate_neu_det(args.work / "neu_x", args.scale)
    config = load_config(config_for(source, args.work / "floors.yaml"))
    home = Path(tempfile.mkdtemp(dir=args.work, prefix="home-floors-"))
    dataset = Path(tempfile.mkdtemp(dir=args.work, prefix="out-floors-")) / "dataset"
    seconds: dict[str, float] = {}
    prepare_steps(config, dataset, home, cores, seconds)
    floor = floors(source, home, dataset, cores)
    steps = [("ingest", seconds["ingest"], floor["ingest"]),
             ("shards + images", seconds["shard"] + seconds["images"], floor["images"]),
             ("flips", seconds["flips"], floor["flips"]),
             ("split", seconds["split"], floor["a record pass"]),
             ("budget", seconds["budget"], floor["a record pass"]),
             ("targets", seconds["targets"], floor["a record pass"]),
             ("publish", seconds["publish"], floor["publish"])]
    lines = ["## Prep step by step against each step's floor (`python -m bench.step_floors`)", "",
             f"At {commit}, {time.strftime('%Y-%m-%d')}: a cold run of {args.scale} NEU-DET images "
             f"(200 x 200) in this process, {cores} cores; floors as the module's text says.", "",
             "| step | seconds | floor | ratio |", "|---|---|---|---|"]
    lines += [f"| {name} | {ours:.3f} | {least:.3f} | **{ours / least:.2f}** |"
              for name, ours, least in steps]
    total, least = sum(s[1] for s in steps), sum(s[2] for s in steps)
    lines.append(f"| **all** | {total:.3f} | {least:.3f} | **{total / least:.2f}** |")
    text = "\n".join(lines)
    write_section(text, "## Prep step by step")
    print(text)


if __name__ == "__main__":
    main()
