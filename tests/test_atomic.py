"""Atomic writes: a write that dies half-way leaves the previous file as it was."""

import pytest
import torch
from safetensors.torch import load_file

from unifork.atomic import atomic_save_tensors, atomic_write, atomic_write_text


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "model.safetensors"
    atomic_save_tensors({"w": torch.ones(3)}, path)

    def dies_half_way(tmp):
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt  # a kill while writing

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, dies_half_way)
    assert torch.equal(load_file(str(path))["w"], torch.ones(3))


def test_text_and_tensors_round_trip(tmp_path):
    atomic_write_text(tmp_path / "a.json", '{"x": 1}')
    assert (tmp_path / "a.json").read_text() == '{"x": 1}'
    atomic_save_tensors({"w": torch.arange(4.0)}, tmp_path / "t.safetensors")
    assert torch.equal(load_file(str(tmp_path / "t.safetensors"))["w"], torch.arange(4.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "t.safetensors"]
