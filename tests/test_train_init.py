"""Training from a pretrained fork (init_checkpoint), tied text heads in freeze patterns, the paper's recipes.

The fork is made by fork-hf from a tiny random Qwen2 that transformers itself builds, tied like Qwen2.5-0.5B.
"""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from unifork.checkpoint import load_model
from unifork.data.spec import parse_source
from unifork.errors import UserError
from unifork.hf import fork_hf
from unifork.inference import Pipeline
from unifork.model import ModelConfig, UniFork, named_config
from unifork.tokenizers.text import world_corpus
from unifork.train.optim import set_trainable
from unifork.train.recipe import load_recipe
from unifork.train.trainer import train

transformers = pytest.importorskip("transformers")

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("qwen2.5-0.5b-*.toml"))
# Qwen2.5-0.5B forked at 12 (docs/scale.md), with Janus-Pro's image tokenizer: 16,384 codes on a 24 x 24 grid
QWEN_05B = ModelConfig(text_vocab_size=151936, image_vocab_size=16384, image_tokens=576, image_latent_dim=256, d_model=896,
                       n_layers=24, n_heads=14, n_kv_heads=2, mlp_hidden=4864, fork_layer=12, max_seq_len=32768,
                       rope_theta=1e6, tie_word_embeddings=True)  # fmt: skip

RECIPE = """
seed = 0
init_checkpoint = "{ckpt}"
{model}
[data]
pool_size = 32
[[stages]]
name = "tune"
steps = 3
batch_size = 8
lr = 3e-3
warmup = 1
mix = {mix}
train = {train}
"""


def write_recipe(path: Path, ckpt, model: str = "", mix: str = "{ und = 0.5, gen = 0.5 }", train: str = '["*"]') -> Path:
    path.write_text(RECIPE.format(ckpt=ckpt, model=model, mix=mix, train=train))
    return path


@pytest.fixture(scope="module")
def fork_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """fork-hf of a random 4-layer Qwen2 with a tied head and its own byte-level BPE, forked at layer 2."""
    root = tmp_path_factory.mktemp("qwen")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    bpe.train_from_iterator(world_corpus(100), trainer=trainer)
    config = transformers.Qwen2Config(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      rope_theta=1e6, tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(1)
    transformers.Qwen2ForCausalLM(config).save_pretrained(root / "hf")
    bpe.save(str(root / "hf" / "tokenizer.json"))
    fork_hf(root / "hf", 2, root / "fork", image_tokenizer_dir=tokenizer_dir)
    return root / "fork"


def test_training_starts_from_a_forked_checkpoint(tmp_path, fork_dir):
    recipe = write_recipe(tmp_path / "r.toml", fork_dir)
    final = train(recipe, tmp_path / "run", progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert load_model(final).cfg == load_model(fork_dir).cfg  # the checkpoint's model, not the recipe's default
    assert (final / "tokenizer.json").read_text() == (fork_dir / "tokenizer.json").read_text()
    assert not (tmp_path / "run" / "tokenizer").exists()  # no tokenizer trained: the fork brought its own
    pipe = Pipeline.from_pretrained(final)
    assert isinstance(pipe.ask(torch.zeros(32, 32, 3, dtype=torch.uint8).numpy(), "what color is the circle?", max_new_tokens=3), str)


def test_und_patterns_train_a_tied_head(tmp_path, fork_dir):
    """With tie_word_embeddings the head's parameter is named trunk.text_embed.weight; und.* must still train it."""
    recipe = write_recipe(tmp_path / "r.toml", fork_dir, mix="{ und = 1.0 }", train='["und.*"]')
    final = train(recipe, tmp_path / "run", progress=False)
    before, after = load_file(str(fork_dir / "model.safetensors")), load_file(str(final / "model.safetensors"))
    assert "und.head.weight" not in after  # still tied: stored once
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "trunk.text_embed.weight" in changed  # the tied head trained
    assert any(k.startswith("und.layers.") for k in changed)
    assert all(k.startswith("und.") or k == "trunk.text_embed.weight" for k in changed), sorted(changed)


@pytest.mark.parametrize("tied", [True, False])
def test_freeze_patterns_see_every_name_of_a_parameter(tied):
    torch.manual_seed(0)
    model = UniFork(named_config("debug", tie_word_embeddings=tied))
    set_trainable(model, ("und.*",))
    assert model.und.head.weight.requires_grad and model.und.layers[0].attn.q_proj.weight.requires_grad
    assert model.trunk.text_embed.weight.requires_grad == tied  # tied, the head and the embedding are one matrix
    assert not model.trunk.layers[0].mlp.up_proj.weight.requires_grad and not model.gen.head.weight.requires_grad
    set_trainable(model, ("und.layers.*", "und.norm.*"))  # how a stage keeps a tied head frozen
    assert not model.und.head.weight.requires_grad and not model.trunk.text_embed.weight.requires_grad


def test_init_checkpoint_errors_are_one_line(tmp_path, fork_dir):
    cases = {
        "is not a directory": (tmp_path / "nowhere", ""),
        "missing model config": (tmp_path, ""),
        "[model] d_model = 32 disagrees with init_checkpoint": (fork_dir, "[model]\nd_model = 32"),
        "[model] mlp_hidden = 128 disagrees": (fork_dir, '[model]\nsize = "debug"'),  # the preset's first differing key
    }  # fmt: skip
    for message, (ckpt, model) in cases.items():
        recipe = write_recipe(tmp_path / "r.toml", ckpt, model=model)
        with pytest.raises(UserError) as err:
            train(recipe, tmp_path / "run", progress=False)
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    agreeing = write_recipe(tmp_path / "r.toml", fork_dir, model="[model]\nd_model = 64\ntie_word_embeddings = true")
    assert load_recipe(agreeing).model_keys == {"d_model": 64, "tie_word_embeddings": True}
    both = tmp_path / "both.toml"
    both.write_text(f'tokenizer_dir = "{fork_dir}"\n' + write_recipe(tmp_path / "r.toml", fork_dir).read_text())
    with pytest.raises(UserError, match="sets both init_checkpoint and tokenizer_dir"):
        load_recipe(both)
    result = subprocess.run([sys.executable, "-m", "unifork.cli", "train", "--config", str(write_recipe(tmp_path / "r.toml", tmp_path / "nowhere")),
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1 and "is not a directory" in result.stderr


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_paper_recipes_load_and_their_patterns_name_real_parameters(tmp_path, config):
    """Validated offline: the data source only has to parse, and the patterns are matched on a meta-device
    Qwen2.5-0.5B fork, so a renamed key or a typo in a parameter group fails here, not on a cluster."""
    raw = tomllib.loads(config.read_text())
    assert raw["init_checkpoint"] and "model" not in raw  # the fork-hf checkpoint fixes the model
    assert parse_source(raw["data"]["source"])[0] == "webdataset"
    offline = tmp_path / config.name  # the shards are not here: the world stands in for them
    offline.write_text(config.read_text().replace(raw["data"]["source"], "world"))
    recipe = load_recipe(offline)
    assert recipe.init_checkpoint == raw["init_checkpoint"] and all(s.batch_size == 384 for s in recipe.stages)
    with torch.device("meta"):
        model = UniFork(QWEN_05B)
    for stage in recipe.stages:
        for pattern in stage.train:  # each pattern alone matches something (set_trainable raises if not)
            set_trainable(model, (pattern,))


def test_paper_recipes_train_what_the_paper_trains():
    """Parameter counts per stage, as docs/scale.md states them."""
    with torch.device("meta"):
        model = UniFork(QWEN_05B)
    counts = {}
    for config in CONFIGS:
        offline = tomllib.loads(config.read_text())
        for stage in offline["stages"]:
            counts[stage["name"]] = sum(p.numel() for p in set_trainable(model, tuple(stage["train"])))
    assert counts == {
        "align_imagenet": 30_910_208, "align_captions": 30_910_208,  # projector + image embeddings + image head
        "joint_pretrain": 703_892_480, "joint_sft": 703_892_480,  # everything
        "gen_branch": 193_629_568,  # the generation branch, its norm and head
        "und_branch": 178_949_504,  # the understanding branch and its norm, not the tied head
    }  # fmt: skip
