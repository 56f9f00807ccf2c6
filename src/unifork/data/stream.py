"""An endless, shuffled, exactly resumable stream of records from a sharded source.

Each epoch visits the shards in a seeded order and passes the records through a seeded shuffle buffer (the
WebDataset recipe: shard order gives the global mixing, the buffer the local one, and nothing needs random
access). The position is small: the epoch, the read cursor (shard, offset) and the buffered records as
(shard, offset) pairs. Restoring re-reads just the shards the buffered records came from, so a resumed stream
yields exactly what the uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from unifork.data.records import Record
from unifork.data.spec import Source
from unifork.errors import UserError

Position = tuple[int, int]  # (shard's place in this epoch's order, record offset within the shard)


class ShuffledStream:
    def __init__(self, source: Source, seed: int, buffer_size: int, keep: Callable[[Record], bool], what: str,
                 stream_id: int):  # fmt: skip
        """`keep` selects the records this stream serves (`what` names them in errors); `stream_id` makes streams
        over the same source shuffle independently."""
        self.source, self.keep, self.what = source, keep, what
        self.seed, self.buffer_size, self.stream_id = seed, buffer_size, stream_id
        self.n_shards = len(source.shards())
        self._start_epoch(0)

    def _start_epoch(self, epoch: int) -> None:
        self.epoch, self.shard, self.offset, self.draws = epoch, 0, 0, 0
        self.order = np.random.default_rng([self.seed, self.stream_id, epoch]).permutation(self.n_shards).tolist()
        self.buffer: list[tuple[Position, Record]] = []
        self.reader = None  # records of shard order[self.shard] from self.offset on, opened lazily

    def _read_one(self) -> tuple[Position, Record] | None:
        """The next record of this epoch in shard order, or None when the epoch's shards are all read."""
        while self.shard < self.n_shards:
            if self.reader is None:
                self.reader = self.source.read(self.order[self.shard], self.offset)
            record = next(self.reader, None)
            if record is not None:
                self.offset += 1
                return (self.shard, self.offset - 1), record
            self.reader, self.shard, self.offset = None, self.shard + 1, 0
        return None

    def _fill(self) -> None:
        while len(self.buffer) < self.buffer_size:
            item = self._read_one()
            if item is None:
                return
            if self.keep(item[1]):
                self.buffer.append(item)

    def next(self) -> Record:
        self._fill()
        if not self.buffer:  # the epoch is used up: next epoch, next shard order
            if self.draws == 0:
                raise UserError(f"data source '{self.source.spec}' has no records {self.what}")
            self._start_epoch(self.epoch + 1)
            self._fill()
        # a fresh generator per draw: the choice depends on (seed, epoch, draw) alone, so no RNG state to save
        rng = np.random.default_rng([self.seed, self.stream_id, self.epoch, self.draws])
        j = int(rng.integers(len(self.buffer)))
        record = self.buffer[j][1]
        self.buffer[j] = self.buffer[-1]
        self.buffer.pop()
        self.draws += 1
        return record

    def state_dict(self) -> dict:
        return {"shards": self.n_shards, "epoch": self.epoch, "shard": self.shard, "offset": self.offset,
                "draws": self.draws, "buffer": [list(position) for position, _ in self.buffer]}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        if state["shards"] != self.n_shards:
            raise UserError(f"data source '{self.source.spec}' has {self.n_shards} shards but the checkpoint was "
                            f"written with {state['shards']}; resume with the data the run started with")  # fmt: skip
        self._start_epoch(state["epoch"])
        self.shard, self.offset, self.draws = state["shard"], state["offset"], state["draws"]
        wanted = [tuple(p) for p in state["buffer"]]
        found: dict[Position, Record] = {}
        for shard in sorted({s for s, _ in wanted}):
            offsets = {o for s, o in wanted if s == shard}
            first = min(offsets)
            for offset, record in enumerate(self.source.read(self.order[shard], first), start=first):
                if offset in offsets:
                    found[(shard, offset)] = record
                if offset >= max(offsets):
                    break
        missing = [p for p in wanted if p not in found]
        if missing:
            raise UserError(f"data source '{self.source.spec}' changed since the checkpoint: record {missing[0][1]} "
                            f"of shard {self.source.shards()[self.order[missing[0][0]]]} is gone")  # fmt: skip
        self.buffer = [(p, found[p]) for p in wanted]
