"""Training batches from image-text data on disk: the streaming counterpart of the world's WorldPool.

Two shuffled streams over the source (stream.py): understanding rows draw records that have question-answer
pairs, generation rows records that have captions, in the stage's mix; captions are dropped for
classifier-free guidance as for the world. Per-row choices (which caption, which questions, dropout) come
from a generator seeded by (seed, stage, step), the records from the streams, so batch k is the same on
every run that reached it the same way, and a checkpoint's `state_dict` holds the streams' positions.

Every rank reads and decodes every record of the global batch (so all ranks agree which images were corrupt
and skipped) and encodes only the images of its own rows; pretokenized data skips both costs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unifork.data.batches import PlannedPool, StageShape, step_generator, task_counts
from unifork.data.config import DataConfig
from unifork.data.pretokenized import PretokenizedSource
from unifork.data.records import Encoded, Record
from unifork.data.spec import open_source
from unifork.data.stream import ShuffledStream
from unifork.errors import UserError
from unifork.images import CorruptImage, announce_corrupt, fit_image
from unifork.sequences import Example, SequenceBuilder
from unifork.tokenizers.codec import ImageCodec
from unifork.tokenizers.image import images_to_tensor
from unifork.und_images import und_image_size



@dataclass(frozen=True)
class StreamRow:
    """One row of a batch, drawn before anything is encoded: the record's image and the text chosen for it."""

    task: str  # "und" or "gen"
    key: str  # the record's, for messages
    image: Any  # uint8 (H, W, 3) pixels, or Encoded (pretokenized)
    turns: tuple = ()  # und: (question, answer) pairs in order
    caption: str = ""  # gen: the prompt; "" is the null condition of classifier-free guidance


class StreamPool(PlannedPool):
    def __init__(self, data: DataConfig, image_tokenizer: ImageCodec, builder: SequenceBuilder,
                 announce: bool = True):  # fmt: skip
        self.data, self.tokenizer, self.builder, self.announce = data, image_tokenizer, builder, announce
        self.source = open_source(data.source)
        if isinstance(self.source, PretokenizedSource):
            if builder.cfg.und_input == "vision":
                raise UserError(f"data source '{data.source}' holds codes, but this model's vision encoder reads "
                                "pixels for understanding rows; train on the source it was pretokenized from")  # fmt: skip
            self.source.check(image_tokenizer, needs_latents=builder.cfg.und_input == "latents")
        self.streams = {
            "und": ShuffledStream(self.source, data.seed, data.shuffle_buffer, lambda r: bool(r.qa),
                                  "with questions and answers (qa), which stages with und rows need", stream_id=1),
            "gen": ShuffledStream(self.source, data.seed, data.shuffle_buffer, lambda r: bool(r.captions),
                                  "with captions, which stages with gen rows need", stream_id=2),
        }  # fmt: skip
        self.skipped = {"corrupt": 0, "too_long": 0}
        self._no_codes = torch.zeros(builder.cfg.image_tokens, dtype=torch.long)  # measures text lengths

    def _reads_pixels(self, task: str) -> bool:
        """Whether rows of `task` feed the model pixels (a vision encoder's understanding rows) rather than codes."""
        return task == "und" and self.builder.cfg.und_input == "vision"

    def _image(self, record: Record, task: str):
        """The record's image, ready for the tokenizer or the vision encoder (or already encoded); raises CorruptImage."""
        if isinstance(record.image, Encoded):
            return record.image
        if record.image is None:
            raise CorruptImage("marked corrupt when pretokenized")
        return fit_image(record.image, und_image_size(self.builder.cfg, self.tokenizer) if self._reads_pixels(task)
                         else self.tokenizer.cfg.image_size)  # fmt: skip

    def _skip(self, reason: str, key: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        if self.announce and reason == "corrupt":
            announce_corrupt(self.skipped[reason], key, detail, "metrics.jsonl")

    def _fits(self, example: Example, tokens_after: int) -> bool:
        """Whether `example` plus `tokens_after` more tokens fits the model's context."""
        return len(example.tokens) + tokens_after <= self.builder.cfg.max_seq_len

    def _row(self, task: str, record: Record, pick: float, drop: float, g: torch.Generator) -> StreamRow | None:
        """The row this record makes, or None (and counted) when it cannot make one."""
        if task == "und":
            order = torch.randperm(len(record.qa), generator=g)[: self.data.und_turns].tolist()
            turns = [record.qa[k] for k in order]
            while turns and not self._fits(self.builder.understand_turns(self._no_codes, None, turns), 0):
                turns = turns[:-1]  # long answers leave room for fewer turns
            if not turns:
                self._skip("too_long", record.key)
                return None
        else:
            words = record.captions[int(pick * len(record.captions))].split()
            if drop < self.data.caption_dropout:
                words = []
            codes_fed = self.builder.cfg.image_tokens - 1  # the prompt is followed by all codes but the last
            while words and not self._fits(self.builder.generate(" ".join(words)), codes_fed):
                words = words[:-1]  # a caption longer than the context keeps its beginning
        try:
            image = self._image(record, task)
        except CorruptImage as err:
            self._skip("corrupt", record.key, str(err))
            return None
        if task == "und":
            return StreamRow(task, record.key, image, turns=tuple(turns))
        return StreamRow(task, record.key, image, caption=" ".join(words))

    def plan(self, stage: StageShape, stage_index: int, step: int) -> list[StreamRow]:
        """The rows of the next global batch; `stage_index` and `step` seed the per-row choices."""
        g = step_generator(self.data.seed, stage_index, step)
        n_und, _ = task_counts(stage)
        rows = []
        for i in range(stage.batch_size):
            task = "und" if i < n_und else "gen"
            stream, row = self.streams[task], None
            first_epoch = stream.epoch
            while row is None:  # skipped records are replaced by the stream's next one
                if stream.epoch > first_epoch + 1:  # a whole epoch went by without one usable record
                    raise UserError(f"data source '{self.data.source}': no usable record for {task} rows in a whole "
                                    f"epoch (skipped so far: {self.skipped['corrupt']} corrupt images, "
                                    f"{self.skipped['too_long']} with text longer than the context)")  # fmt: skip
                pick, drop = torch.rand(2, generator=g).tolist()
                row = self._row(task, stream.next(), pick, drop, g)
            rows.append(row)
        return rows

    def build(self, rows: list[StreamRow]) -> list[Example]:
        pixels = [r.image for r in rows if not isinstance(r.image, Encoded) and not self._reads_pixels(r.task)]
        encoded = iter(())
        if pixels:  # one tokenizer call for all the rows' images
            with torch.no_grad():
                images = images_to_tensor(np.stack(pixels))
                encoded = iter(zip(self.tokenizer.encode(images), self.tokenizer.encode_latents(images)))
        examples = []
        for row in rows:
            if isinstance(row.image, Encoded):
                image = row.image
            elif self._reads_pixels(row.task):  # the model's vision encoder reads them (und_images.py)
                image = Encoded(self._no_codes[:0], images_to_tensor(row.image[None])[0])
            else:
                image = Encoded(*next(encoded))
            if row.task == "gen":
                examples.append(self.builder.generate(row.caption, image.codes))
            else:
                examples.append(self.builder.understand_turns(image.codes, image.latents, list(row.turns)))
        return examples

    def state_dict(self) -> dict:
        return {"streams": {task: s.state_dict() for task, s in self.streams.items()}, "skipped": dict(self.skipped)}

    def load_state_dict(self, state: dict) -> None:
        if "streams" not in state:
            raise UserError(f"the checkpoint holds no position in data source '{self.data.source}' (was the run "
                            f"started with another [data] source?); resume with the recipe it started with")  # fmt: skip
        for task, stream in self.streams.items():
            stream.load_state_dict(state["streams"][task])
        self.skipped = dict(state["skipped"])

    def metrics(self) -> dict:
        return {f"skipped_{reason}": n for reason, n in self.skipped.items()}
