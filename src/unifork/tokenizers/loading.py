"""Load any image tokenizer directory: ours (`tokenizer train`) or an imported one (`tokenizer from-hf`).

config.json's "kind" says which; every command that takes a tokenizer directory loads it through here.
"""

from __future__ import annotations

import json
from pathlib import Path

from unifork.errors import UserError
from unifork.tokenizers.codec import ImageCodec
from unifork.tokenizers.image import CONFIG_FILE, KIND, ImageTokenizer


def image_tokenizer_kind(directory: str | Path) -> str | None:
    """The kind named in directory/config.json, or None when there is no image tokenizer there."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        kind = json.loads(path.read_text()).get("kind", KIND)
    except (ValueError, AttributeError) as err:
        raise UserError(f"corrupt image tokenizer config {path}: {err}") from None
    return kind


def load_image_tokenizer(directory: str | Path) -> ImageCodec:
    kind = image_tokenizer_kind(directory)
    if kind is None or kind == KIND:
        return ImageTokenizer.load(directory)  # which names the missing files
    from unifork.tokenizers.pretrained import PretrainedImageTokenizer

    return PretrainedImageTokenizer.load(directory)
