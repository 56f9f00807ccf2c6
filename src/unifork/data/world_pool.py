"""`[data] source = "world"`: a pool of world samples whose images the frozen image tokenizer encodes once.

Precomputing codes and latents is how real runs save compute (the tokenizer never changes during training).
Batches are a pure function of (seed, stage, step), so resuming needs no data-loader state.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
import torch

from unifork.data.batches import PlannedPool, StageShape, step_generator, task_counts
from unifork.data.config import DataConfig
from unifork.errors import UserError
from unifork.images import fit_image
from unifork.sequences import Example, SequenceBuilder
from unifork.tokenizers.codec import ImageCodec
from unifork.tokenizers.image import images_to_tensor
from unifork.und_images import und_inputs
from unifork.world import World
from unifork.world.questions import QUESTION_TYPES, opposite_question


@dataclass(frozen=True)
class RowPlan:
    """What one row of a batch holds, drawn before anything is built (building is deterministic)."""

    task: str  # "und" or "gen"
    sample: int  # index into the pool
    turns: tuple = ()  # und: (question, answer) pairs in order
    caption: str = ""  # gen: the prompt; "" is the null condition of classifier-free guidance


class WorldPool(PlannedPool):
    """`pool_size` world samples of `split`, their images encoded once."""

    def __init__(self, data: DataConfig, image_tokenizer: ImageCodec, builder: SequenceBuilder,
                 split: str = "train", encode_batch: int = 256):  # fmt: skip
        self.data, self.builder = data, builder
        world = World(seed=data.seed, split=split)
        samples = [world.sample(i) for i in range(data.pool_size)]
        self.captions = [[c for _, c in s.captions] for s in samples]
        keep = set(data.question_types or QUESTION_TYPES)
        self.qa = [[(t, q, a) for t, q, a in s.qa if t in keep] for s in samples]
        # An understanding row drawn on a sample without kept questions takes the next sample that has some.
        asked = [i for i, qa in enumerate(self.qa) if qa]
        if not asked:
            raise UserError(f"no world sample has questions of the types {list(data.question_types)}")
        self.und_sample = [asked[bisect.bisect_left(asked, i) % len(asked)] for i in range(len(self.qa))]
        images = np.stack([s.image for s in samples])
        size = image_tokenizer.cfg.image_size  # a tokenizer for another size than the world's renders
        sized = images if images.shape[1] == size else np.stack([fit_image(image, size) for image in images])
        codes, latents = [], []
        with torch.no_grad():
            for chunk in images_to_tensor(sized).split(encode_batch):
                codes.append(image_tokenizer.encode(chunk))
                if builder.cfg.und_input == "latents":
                    latents.append(image_tokenizer.encode_latents(chunk))
        self.codes = torch.cat(codes)  # (N, L)
        self.latents = torch.cat(latents) if latents else None  # (N, L, latent_dim)
        self.tokenizer = image_tokenizer
        self.images = images if builder.cfg.und_input == "vision" else None  # a vision encoder's rows read pixels

    def plan(self, stage: StageShape, stage_index: int, step: int) -> list[RowPlan]:
        """The rows of the global batch of `step` in `stage`: the same on every run, resume and world size."""
        g = step_generator(self.data.seed, stage_index, step)
        n_und, _ = task_counts(stage)
        samples = torch.randint(len(self.codes), (stage.batch_size,), generator=g).tolist()
        picks = torch.rand(stage.batch_size, 2, generator=g).tolist()
        rows = []
        for i, (sample, (pick, drop)) in enumerate(zip(samples, picks)):
            if i < n_und:
                sample = self.und_sample[sample]
                order = torch.randperm(len(self.qa[sample]), generator=g)[: self.data.und_turns].tolist()
                rows.append(RowPlan("und", sample, turns=self._turns([self.qa[sample][k] for k in order])))
            else:
                caption = self.captions[sample][int(pick * len(self.captions[sample]))]
                rows.append(RowPlan("gen", sample, caption="" if drop < self.data.caption_dropout else caption))
        return rows

    def _turns(self, questions: list[tuple[str, str, str]]) -> tuple:
        """(question, answer) turns; with relation_pairs each relation question is followed by its twin."""
        turns = []
        for qtype, question, answer in questions:
            turns.append((question, answer))
            if qtype == "relation" and self.data.relation_pairs:
                turns.append(opposite_question(question, answer))
        return tuple(turns)

    def build(self, rows: list[RowPlan]) -> list[Example]:
        return [self._example(row) for row in rows]

    def _example(self, row: RowPlan) -> Example:
        codes, latents = self.codes[row.sample], None
        if row.task == "und" and self.latents is not None:
            latents = self.latents[row.sample]
        elif row.task == "und" and self.images is not None:
            latents = und_inputs(self.builder.cfg, self.tokenizer, [self.images[row.sample]])[1][0]
        if row.task == "gen":
            return self.builder.generate(row.caption, codes)
        turns = list(row.turns)
        example = self.builder.understand_turns(codes, latents, turns)
        while len(example.tokens) > self.builder.cfg.max_seq_len and len(turns) > 1:
            turns = turns[:-1]  # long answers (descriptions) leave room for fewer turns
            example = self.builder.understand_turns(codes, latents, turns)
        return example

    def state_dict(self) -> dict:
        return {}  # batches are a pure function of (seed, stage, step): there is no position to save

    def load_state_dict(self, state: dict) -> None:
        pass

    def metrics(self) -> dict:
        return {}
