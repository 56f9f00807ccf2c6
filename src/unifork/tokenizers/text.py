"""Subword text tokenizer: a byte-level BPE from HF `tokenizers`, trained on the world's text or loaded from any
local Hugging Face tokenizer directory (for pretrained LLM backbones)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from unifork.errors import UserError

# Our sequence markers. A pretrained tokenizer that lacks them gets them appended as added special tokens.
SPECIAL_TOKENS = {"bos": "<|bos|>", "eos": "<|eos|>", "pad": "<|pad|>", "img_start": "<|img|>", "img_end": "<|/img|>"}
TOKENIZER_FILE = "tokenizer.json"


class TextTokenizer:
    """Wraps a `tokenizers.Tokenizer`; byte-level, so any text (unknown words, any script) encodes losslessly.

    Marker strings such as "<|eos|>" inside text are encoded as plain text, never as the marker ids: a prompt cannot
    inject sequence markers. Text that is not valid Unicode (lone surrogates: what Python makes of non-UTF-8
    bytes in argv or file names) is a UserError.
    """

    def __init__(self, tokenizer: Tokenizer):
        missing = [tok for tok in SPECIAL_TOKENS.values() if tokenizer.token_to_id(tok) is None]
        if missing:
            tokenizer.add_special_tokens(missing)
        tokenizer.encode_special_tokens = True  # not saved in tokenizer.json: only our encode() sees it
        self.tokenizer = tokenizer
        self.special_ids = {name: tokenizer.token_to_id(tok) for name, tok in SPECIAL_TOKENS.items()}

    @property
    def bos_id(self) -> int:
        return self.special_ids["bos"]

    @property
    def eos_id(self) -> int:
        return self.special_ids["eos"]

    @property
    def pad_id(self) -> int:
        return self.special_ids["pad"]

    @property
    def img_start_id(self) -> int:
        return self.special_ids["img_start"]

    @property
    def img_end_id(self) -> int:
        return self.special_ids["img_end"]

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text, without BOS/EOS (sequence builders add those)."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise UserError(
                f"text is not valid Unicode: {text[err.start]!r} at position {err.start} is a lone surrogate, which is "
                "what non-UTF-8 bytes become; give UTF-8 text"
            ) from None
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 512) -> "TextTokenizer":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS.values()),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(directory / TOKENIZER_FILE))

    @classmethod
    def load(cls, directory: str | Path) -> "TextTokenizer":
        """Load `tokenizer.json` from our checkpoints or any local Hugging Face tokenizer directory."""
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise UserError(f"missing text tokenizer file {path}; train one with `unifork tokenizer train --out DIR`")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception on malformed JSON
            raise UserError(f"corrupt text tokenizer file {path}: {str(err).splitlines()[0]}") from None
        return cls(tokenizer)


def world_corpus(n_samples: int = 4000, seed: int = 0) -> list[str]:
    """Every caption, question and answer of n samples of the training split: the text the tokenizer learns."""
    from unifork.world import World

    world = World(seed=seed, split="train")
    texts = []
    for i in range(n_samples):
        sample = world.sample(i)
        texts.extend(caption for _, caption in sample.captions)
        texts.extend(f"{q} {a}" for _, q, a in sample.qa)
    return texts

