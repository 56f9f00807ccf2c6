"""Image-text data on disk for training: readers per format, a shuffled resumable stream, pre-tokenization.

Sources are named by specs such as "folder:data/pets" or "webdataset:shards/{000..031}.tar" (spec.py); the
trainer draws batches through a pool (pool.py): the world's or a stream over data on disk. docs/scale.md ("Real data") describes the formats.
"""

from unifork.data.pretokenize import pretokenize
from unifork.data.spec import SCHEMES, check_source, open_source, parse_source

__all__ = ["SCHEMES", "check_source", "open_source", "parse_source", "pretokenize"]
