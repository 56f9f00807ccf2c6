"""Training data: a pool of world samples whose images the frozen image tokenizer encodes once.

Precomputing codes and latents is how real runs save compute (the tokenizer never changes during training).
Batches are a pure function of (seed, stage, step), so resuming needs no data-loader state.
"""

from __future__ import annotations

import numpy as np
import torch

from unifork.model.unifork import Batch
from unifork.sequences import Example, SequenceBuilder
from unifork.tokenizers.image import ImageTokenizer, images_to_tensor
from unifork.train.recipe import DataConfig, StageConfig
from unifork.world import World


class SamplePool:
    def __init__(self, data: DataConfig, image_tokenizer: ImageTokenizer, builder: SequenceBuilder,
                 split: str = "train", encode_batch: int = 256):  # fmt: skip
        self.data, self.builder = data, builder
        world = World(seed=data.seed, split=split)
        samples = [world.sample(i) for i in range(data.pool_size)]
        self.captions = [[c for _, c in s.captions] for s in samples]
        self.qa = [[(q, a) for _, q, a in s.qa] for s in samples]
        images = images_to_tensor(np.stack([s.image for s in samples]))
        codes, latents = [], []
        with torch.no_grad():
            for chunk in images.split(encode_batch):
                codes.append(image_tokenizer.encode(chunk))
                latents.append(image_tokenizer.encode_latents(chunk))
        self.codes = torch.cat(codes)  # (N, L)
        self.latents = torch.cat(latents)  # (N, L, latent_dim)

    def batch(self, stage: StageConfig, stage_index: int, step: int) -> Batch:
        """The batch of `step` in `stage`: the same on every run and after every resume."""
        g = torch.Generator().manual_seed(hash((self.data.seed, stage_index, step)) & 0x7FFFFFFF)
        total = sum(stage.mix.values())
        n_gen = round(stage.batch_size * stage.mix.get("gen", 0.0) / total)
        n_und = stage.batch_size - n_gen
        rows = torch.randint(len(self.codes), (stage.batch_size,), generator=g).tolist()
        picks = torch.rand(stage.batch_size, 2, generator=g).tolist()
        examples: list[Example] = []
        for i, (row, (pick, drop)) in enumerate(zip(rows, picks)):
            if i < n_und:
                order = torch.randperm(len(self.qa[row]), generator=g)[: self.data.und_turns].tolist()
                turns = [self.qa[row][k] for k in order]
                example = self.builder.understand_turns(self.codes[row], self.latents[row], turns)
                while len(example.tokens) > self.builder.cfg.max_seq_len and len(turns) > 1:
                    turns = turns[:-1]  # long answers (descriptions) leave room for fewer turns
                    example = self.builder.understand_turns(self.codes[row], self.latents[row], turns)
                examples.append(example)
            else:
                caption = self.captions[row][int(pick * len(self.captions[row]))]
                caption = "" if drop < self.data.caption_dropout else caption
                examples.append(self.builder.generate(caption, self.codes[row]))
        return self.builder.collate(examples)
