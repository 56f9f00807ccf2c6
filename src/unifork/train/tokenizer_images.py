"""Where the image tokenizer's training and held-out images come from: the shapes world, or any data source.

    WorldImages    a fixed set of rendered train-split scenes, drawn with replacement (and their per-cell
                   labels, for the semantic term); held out: the held-out compositions and unseen scenes
    SourceImages   a shuffled, exactly resumable stream over a source's records (data/stream.py), each image
                   prepared by images.fit_image; corrupt images are skipped and counted. Held out: the
                   records of a separate evaluation source, or else every HOLDOUT_EVERY-th record by a hash
                   of its key, which training never draws

Both hand out batches as float (B, 3, H, W) tensors in [-1, 1] and have a state_dict for exact resume.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from unifork.data.records import Record
from unifork.data.spec import Source, open_source, parse_source
from unifork.data.stream import ShuffledStream
from unifork.errors import UserError
from unifork.images import CorruptImage, announce_corrupt, fit_image
from unifork.tokenizers.image import images_to_tensor
from unifork.world import World

HOLDOUT_EVERY = 50  # without an evaluation source, 1 record in 50 (by key hash) is held out of training


def world_data(split: str, n: int, seed: int = 0) -> tuple[torch.Tensor, list]:
    """The first n images of a world split as a (n, 3, H, W) tensor, and their scenes."""
    world = World(seed=seed, split=split)
    samples = [world.sample(i) for i in range(n)]
    return images_to_tensor(np.stack([s.image for s in samples])), [s.scene for s in samples]


def world_images(split: str, n: int, seed: int = 0) -> torch.Tensor:
    return world_data(split, n, seed)[0]


class WorldImages:
    def __init__(self, n_images: int, seed: int):
        self.images, self.scenes = world_data("train", n_images, seed=seed)
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and their indices into self.scenes (the semantic term's labels)."""
        pick = torch.randint(len(self.images), (batch_size,), generator=self.generator)
        return self.images[pick], pick

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def held_out(record: Record) -> bool:
    return zlib.crc32(record.key.encode()) % HOLDOUT_EVERY == 0


def _open_images(spec: str) -> Source:
    if parse_source(spec)[0] == "pretokenized":
        raise UserError(f"data source '{spec}' holds pretokenized codes, not images; train the image tokenizer "
                        "on the images they were made from")  # fmt: skip
    return open_source(spec)


class SourceImages:
    def __init__(self, spec: str, image_size: int, seed: int, shuffle_buffer: int, holdout: bool, announce: bool = True):
        """`holdout`: leave the hashed held-out records out (there is no separate evaluation source)."""
        self.source, self.image_size, self.announce = _open_images(spec), image_size, announce
        keep = (lambda r: r.image is not None and not held_out(r)) if holdout else (lambda r: r.image is not None)
        self.stream = ShuffledStream(self.source, seed, shuffle_buffer, keep, "with images", stream_id=3)
        self.skipped = 0

    def _skip(self, record: Record, err: CorruptImage) -> None:
        self.skipped += 1
        if self.announce:
            announce_corrupt(self.skipped, record.key, str(err), "report.json")

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, None]:
        pixels, last_good_epoch = [], self.stream.epoch
        while len(pixels) < batch_size:  # a small source may go round several times for one batch
            if self.stream.epoch > last_good_epoch + 1:
                raise UserError(f"data source '{self.source.spec}' has no readable image: a whole epoch went by "
                                f"with {self.skipped} corrupt images skipped and none usable")  # fmt: skip
            record = self.stream.next()
            try:
                pixels.append(fit_image(record.image, self.image_size))
                last_good_epoch = self.stream.epoch
            except CorruptImage as err:
                self._skip(record, err)
        return images_to_tensor(np.stack(pixels)), None

    def state_dict(self) -> dict:
        return {"stream": self.stream.state_dict(), "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["stream"])
        self.skipped = state["skipped"]


def source_eval_images(spec: str, image_size: int, n: int, holdout: bool) -> torch.Tensor:
    """Up to n readable images of the source in its own order (only the hashed held-out records with `holdout`)."""
    source, pixels = _open_images(spec), []
    for shard in range(len(source.shards())):
        for record in source.read(shard):
            if record.image is None or (holdout and not held_out(record)):
                continue
            try:
                pixels.append(fit_image(record.image, image_size))
            except CorruptImage:
                continue
            if len(pixels) == n:
                return images_to_tensor(np.stack(pixels))
    if not pixels and holdout:
        raise UserError(f"no readable image among the 1 in {HOLDOUT_EVERY} records of '{spec}' held out (by key "
                        "hash) to measure the tokenizer on; give more images or a separate evaluation source")  # fmt: skip
    if not pixels:
        raise UserError(f"data source '{spec}' has no readable image; check its image paths or files")
    return images_to_tensor(np.stack(pixels))


def source_corpus(spec: str, n_records: int) -> list[str]:
    """The captions, questions and answers of the source's first n_records records: the text tokenizer's corpus."""
    source, texts, seen = _open_images(spec), [], 0
    for shard in range(len(source.shards())):
        for record in source.read(shard):
            texts += list(record.captions) + [f"{q} {a}" for q, a in record.qa]
            seen += 1
            if seen == n_records:
                return texts
    return texts
