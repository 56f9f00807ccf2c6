"""`pretokenized:PATH`: records whose images the frozen image tokenizer already encoded (`unifork data pretokenize`).

    PATH/meta.json                  source spec, tokenizer fingerprint, sizes, shard names and counts
    PATH/shard-00000.safetensors    codes (N, L) int32 (int64 for packed residual codes past 2^31), valid (N,) bool,
                                    latents (N, L, D) float32 if kept
    PATH/shard-00000.jsonl          one {"key", "captions", "qa"} line per row

One output shard per source shard, rows in source order, and a corrupt image stays as a row with valid =
False: the pretokenized stream is the source's stream record for record, so the same seed gives the same
shuffle, the same batches and the same count of skipped images.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from safetensors.torch import load_file

from unifork.data.records import Encoded, Record
from unifork.errors import UserError
from unifork.tokenizers.codec import ImageCodec

META_FILE = "meta.json"
FORMAT = "unifork-pretokenized-v1"


def shard_stem(index: int) -> str:
    return f"shard-{index:05d}"


def read_meta(path: Path, spec: str) -> dict:
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise UserError(f"data source '{spec}': {path} holds no {META_FILE}; write it with `unifork data pretokenize`")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise UserError(f"data source '{spec}': {meta_path} is not {FORMAT} data")
    if not meta.get("complete"):
        raise UserError(f"data source '{spec}': pretokenizing into {path} did not finish; run the same command again")
    return meta


class PretokenizedSource:
    def __init__(self, path: Path, spec: str):
        self.spec, self.path = spec, path
        if not path.is_dir():
            raise UserError(f"data source '{spec}': no such folder {path}")
        self.meta = read_meta(path, spec)

    def check(self, tokenizer: ImageCodec, needs_latents: bool) -> None:
        """Refuse codes from another tokenizer, or missing latents when the model reads latents."""
        if self.meta["tokenizer"] != tokenizer.fingerprint():
            raise UserError(f"data source '{self.spec}' was pretokenized with another image tokenizer than this run's; "
                            f"pretokenize again with the run's tokenizer")  # fmt: skip
        if needs_latents and not self.meta["latents"]:
            raise UserError(f"data source '{self.spec}' holds codes only, but the model reads latents (und_input = "
                            f"\"latents\"); pretokenize it again with latents")  # fmt: skip

    def shards(self) -> list[str]:
        return [s["name"] for s in self.meta["shards"]]

    def read(self, shard: int, start: int = 0) -> Iterator[Record]:
        stem = shard_stem(shard)
        tensors = load_file(str(self.path / f"{stem}.safetensors"))
        codes, valid, latents = tensors["codes"].long(), tensors["valid"], tensors.get("latents")
        with open(self.path / f"{stem}.jsonl") as lines:
            for i, line in enumerate(lines):
                if i < start:
                    continue
                text = json.loads(line)
                image = Encoded(codes[i], None if latents is None else latents[i]) if valid[i] else None
                yield Record(text["key"], image, tuple(text["captions"]), tuple(map(tuple, text["qa"])))
