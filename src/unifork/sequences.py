"""How samples become sequences, shared by training and inference (UniFork's two formats):

    understanding: [BOS] <img> image-input </img> question -> answer [EOS]     (loss on answer + EOS)
    generation:    [BOS] caption <img> -> image codes                          (loss on the codes)

Batches are left-padded so every row's next token sits at the same column (batched KV-cache decoding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unifork.errors import UserError
from unifork.model.config import ModelConfig
from unifork.model.unifork import CODE, IGNORE, LATENT, TASK_ID, TEXT, Batch
from unifork.tokenizers.text import TextTokenizer


@dataclass
class Example:
    task: str
    tokens: list[int]
    kinds: list[int]
    targets: list[int]
    latents: torch.Tensor | None = None  # (L, latent_dim) when the image enters as projected latents; (3, H, W) pixels for "vision"


class SequenceBuilder:
    def __init__(self, text: TextTokenizer, cfg: ModelConfig):
        self.text, self.cfg = text, cfg

    def understand(self, question: str, codes: torch.Tensor, latents: torch.Tensor | None,
                   answer: str | None = None) -> Example:  # fmt: skip
        """A one-question understanding example; without `answer` it is the prompt to decode from."""
        return self.understand_turns(codes, latents, [(question, answer)])

    def understand_turns(self, codes: torch.Tensor, latents: torch.Tensor | None,
                         turns: list[tuple[str, str | None]]) -> Example:  # fmt: skip
        """Several question -> answer [EOS] turns about one image (only the last answer may be None).

        Training packs several questions per image: the 64 image positions are most of the sequence's cost,
        so more answers per image multiply the understanding signal per step almost for free.
        """
        t = self.text
        n_img = self.cfg.und_image_tokens
        if self.cfg.und_input in ("latents", "vision"):
            image_tokens, image_kinds = [0] * n_img, [LATENT] * n_img
        else:
            latents = None
            image_tokens, image_kinds = [int(c) for c in codes], [CODE] * n_img
        tokens = [t.bos_id, t.img_start_id, *image_tokens, t.img_end_id]
        kinds = [TEXT, TEXT, *image_kinds, TEXT]
        is_answer = [False] * len(tokens)
        for question, answer in turns:
            question_ids = t.encode(question)
            answer_ids = [] if answer is None else t.encode(answer) + [t.eos_id]
            tokens += question_ids + answer_ids
            is_answer += [False] * len(question_ids) + [True] * len(answer_ids)
        kinds += [TEXT] * (len(tokens) - len(kinds))
        # position i predicts token i + 1; a loss applies where that token belongs to an answer (or its EOS)
        targets = [tokens[i + 1] if is_answer[i + 1] else IGNORE for i in range(len(tokens) - 1)] + [IGNORE]
        if turns[-1][1] is not None:  # the final EOS is predicted, never fed back
            tokens, kinds, targets = tokens[:-1], kinds[:-1], targets[:-1]
        return Example("und", tokens, kinds, targets, latents)

    def generate(self, caption: str, codes: torch.Tensor | None = None) -> Example:
        """A generation example (caption "" is the null condition used for classifier-free guidance)."""
        t = self.text
        caption_ids = t.encode(caption) if caption else []
        tokens = [t.bos_id, *caption_ids, t.img_start_id]
        kinds = [TEXT] * len(tokens)
        targets = [IGNORE] * len(tokens)
        if codes is not None:
            codes = [int(c) for c in codes]
            tokens += codes[:-1]
            kinds += [CODE] * (len(codes) - 1)
            targets = targets[:-1] + codes
        return Example("gen", tokens, kinds, targets)

    def collate(self, examples: list[Example]) -> Batch:
        longest = max(examples, key=lambda e: len(e.tokens))
        width = len(longest.tokens)
        if width > self.cfg.max_seq_len:
            what, text = {"gen": ("a prompt", "prompt"), "und": ("an image + question", "question")}[longest.task]
            raise UserError(
                f"{what} sequence of {width} tokens exceeds the model's context of {self.cfg.max_seq_len}; "
                f"shorten the {text}"
            )
        b = len(examples)
        tokens = torch.zeros(b, width, dtype=torch.long)
        kinds = torch.full((b, width), TEXT, dtype=torch.long)
        targets = torch.full((b, width), IGNORE, dtype=torch.long)
        valid = torch.zeros(b, width, dtype=torch.bool)
        for row, e in enumerate(examples):
            start = width - len(e.tokens)
            tokens[row, start:] = torch.tensor(e.tokens)
            kinds[row, start:] = torch.tensor(e.kinds)
            targets[row, start:] = torch.tensor(e.targets)
            valid[row, start:] = True
        tokens[~valid] = self.text.pad_id
        latents = [e.latents for e in examples if e.latents is not None]
        return Batch(
            tokens=tokens,
            kinds=kinds,
            valid=valid,
            task=torch.tensor([TASK_ID[e.task] for e in examples]),
            latents=torch.stack(latents) if latents else None,
            targets=targets,
        )
