"""Pretrained HF backbones: fork-hf and export-hf keep transformers' own logits, the fork copies, the errors.

Tiny random Qwen2 (tied and untied head) and Llama models are built with transformers itself, with weights far
larger than its init (and nonzero biases and norm gains), so a misplaced tensor changes the logits visibly.
"""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from unifork.checkpoint import load_model, save_pretrained
from unifork.cli import main
from unifork.errors import UserError
from unifork.hf import export_hf, fork_hf
from unifork.inference import Pipeline
from unifork.model import TEXT, Batch, ModelConfig, UniFork, named_config
from unifork.model.blocks import Rotary
from unifork.sequences import SequenceBuilder
from unifork.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
from unifork.tokenizers.text import TextTokenizer, world_corpus

transformers = pytest.importorskip("transformers")

TOL = 1e-4  # max abs logit difference allowed in fp32
BPE_SIZE = 280  # the pretrained tokenizer's ids; our five special tokens come after them
KINDS = ("qwen2-tied", "qwen2-untied", "llama")
MEASURED: dict[str, float] = {}  # max abs logit differences, printed at the end of the module (pytest -s)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from intra-op threads; on a busy 2-core machine they cost 10x the time."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    for name, diff in sorted(MEASURED.items()):
        print(f"\nmax |logit difference| {name}: {diff:.2e}", end="")


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    """A byte-level BPE the way HF checkpoints ship one: its own special token, none of ours."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_SIZE, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tokenizer.train_from_iterator(world_corpus(100), trainer=trainer)
    assert tokenizer.get_vocab_size() == BPE_SIZE
    return tokenizer


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """An untrained 32 px image tokenizer: a 4 x 4 grid keeps image sequences short."""
    out = tmp_path_factory.mktemp("image_tokenizer")
    torch.manual_seed(0)
    ImageTokenizer(ImageTokenizerConfig(image_size=32, channels=(16, 32, 64))).save(out)
    return out


def hf_model(kind: str):
    """A random 4-layer HF model. Qwen2's vocabulary is padded past the tokenizer (as Qwen2.5's is); Llama's is not."""
    common = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 96}  # fmt: skip
    if kind == "llama":
        config = transformers.LlamaConfig(vocab_size=BPE_SIZE, rms_norm_eps=1e-5, tie_word_embeddings=False, **common)
        model_class = transformers.LlamaForCausalLM
    else:
        config = transformers.Qwen2Config(vocab_size=300, rope_theta=1e6, tie_word_embeddings=kind == "qwen2-tied", **common)
        model_class = transformers.Qwen2ForCausalLM
    torch.manual_seed(1)
    model = model_class(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def converted(tmp_path_factory, bpe, image_dir) -> dict:
    """kind -> (HF model, its directory, the fork-hf checkpoint directory forked at layer 2 of 4).

    The tied Qwen2 is stored in bf16 like Qwen2.5-0.5B (its fp32 reference holds the rounded weights); the Llama
    is stored in shards (model.safetensors.index.json) like larger checkpoints.
    """
    out = {}
    for kind in KINDS:
        model = hf_model(kind)
        hf_dir, fork_dir = tmp_path_factory.mktemp(f"{kind}-hf"), tmp_path_factory.mktemp(f"{kind}-fork")
        stored = model
        if kind == "qwen2-tied":  # round the reference's weights; keep its RoPE buffer in fp32
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(p.to(torch.bfloat16))
            stored = copy.deepcopy(model).to(torch.bfloat16)
        stored.save_pretrained(hf_dir, max_shard_size="100KB" if kind == "llama" else "1GB")
        bpe.save(str(hf_dir / "tokenizer.json"))
        fork_hf(hf_dir, 2, fork_dir, image_tokenizer_dir=image_dir)
        out[kind] = (model, hf_dir, fork_dir)
    return out


def text_batch(lengths: list[int], vocab: int, seed: int = 0) -> Batch:
    """Left-padded text-only und rows of random ids below `vocab`."""
    width = max(lengths)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (len(lengths), width), generator=g)
    valid = torch.arange(width)[None, :] >= width - torch.tensor(lengths)[:, None]
    return Batch(tokens=tokens * valid, kinds=torch.full_like(tokens, TEXT), valid=valid,
                 task=torch.zeros(len(lengths), dtype=torch.long))  # fmt: skip


def max_diff(ours: UniFork, hf, batch: Batch, vocab: int) -> float:
    """Max |logit difference| at every non-padding position over ids [0, vocab); HF gets our padding-skipping positions."""
    with torch.no_grad():
        mine = ours.logits("und", batch)[..., :vocab]
        theirs = hf(input_ids=batch.tokens, attention_mask=batch.valid.long(), position_ids=batch.positions).logits
    return (mine - theirs[..., :vocab])[batch.valid].abs().max().item()


def test_rotary_tables_equal_transformers():
    theta, head_dim, n = 1e6, 16, 256
    config = transformers.Qwen2Config(hidden_size=64, num_attention_heads=4, rope_theta=theta, max_position_embeddings=n)
    rope = transformers.models.qwen2.modeling_qwen2.Qwen2RotaryEmbedding(config)
    positions = torch.arange(n)[None]
    cos, sin = rope(torch.zeros(1, dtype=torch.float32), positions)
    ours = Rotary(head_dim, n, theta)
    assert torch.allclose(ours.cos, cos[0], atol=1e-5) and torch.allclose(ours.sin, sin[0], atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_forked_und_path_equals_transformers(converted, kind):
    hf, _, fork_dir = converted[kind]
    model = load_model(fork_dir)
    diff = max_diff(model, hf, text_batch([23, 9, 17], BPE_SIZE), BPE_SIZE)
    MEASURED[f"fork-hf {kind} vs transformers"] = diff
    assert diff <= TOL


def test_tied_head_stays_tied_on_disk_and_after_loading(converted):
    _, _, fork_dir = converted["qwen2-tied"]
    model = load_model(fork_dir)
    assert model.cfg.tie_word_embeddings and model.und.head.weight is model.trunk.text_embed.weight
    assert "und.head.weight" not in load_file(str(fork_dir / "model.safetensors"))
    assert load_model(fork_dir, task="gen").gen is not None  # a gen-only load has no head to tie
    counts = model.param_counts()
    assert counts["total"] == sum(p.numel() for p in model.parameters())  # the shared matrix counts once


@pytest.mark.parametrize("kind", ["qwen2-untied", "llama"])
def test_only_rows_of_new_tokens_start_at_the_mean_the_checkpoints_rows_stay(converted, kind):
    """Qwen2's vocabulary is padded past its tokenizer: the padding rows after our tokens keep their values."""
    hf, _, fork_dir = converted[kind]
    model, text = load_model(fork_dir), TextTokenizer.load(fork_dir)
    assert text.vocab_size == BPE_SIZE + 5 and model.cfg.text_vocab_size == max(hf.config.vocab_size, BPE_SIZE + 5)
    new = slice(BPE_SIZE, BPE_SIZE + 5)
    for ours, theirs in ((model.trunk.text_embed.weight, hf.model.embed_tokens.weight), (model.und.head.weight, hf.lm_head.weight)):
        mean = theirs[:BPE_SIZE].mean(0)
        assert torch.equal(ours[:BPE_SIZE], theirs[:BPE_SIZE])
        assert torch.allclose(ours[new], mean.expand_as(ours[new]))
        kept = theirs.shape[0] - (BPE_SIZE + 5)
        assert kept <= 0 or torch.equal(ours[BPE_SIZE + 5 : theirs.shape[0]], theirs[BPE_SIZE + 5 :])
        assert torch.allclose(ours[theirs.shape[0] :], mean.expand_as(ours[theirs.shape[0] :]))  # past the checkpoint's


def test_gen_branch_is_an_independent_copy_of_the_und_branch(converted, image_dir):
    _, _, fork_dir = converted["qwen2-untied"]
    model = load_model(fork_dir).train()
    und, gen = model.und.state_dict(), model.gen.state_dict()
    copied = [k for k in gen if k.startswith(("layers.", "norm."))]
    assert copied and all(torch.equal(gen[k], und[k]) for k in copied)
    assert all(gen[k].data_ptr() != und[k].data_ptr() for k in copied)
    und_before = {k: v.clone() for k, v in und.items()}
    builder = SequenceBuilder(TextTokenizer.load(fork_dir), model.cfg)
    codes = torch.randint(0, model.cfg.image_vocab_size, (model.cfg.image_tokens,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(builder.collate([builder.generate("a red circle", codes)]))["loss"].backward()
    optimizer.step()
    assert all(torch.equal(model.und.state_dict()[k], v) for k, v in und_before.items())
    assert not torch.equal(model.gen.state_dict()[copied[0]], und_before[copied[0]])


def test_forked_checkpoint_trains_and_serves(converted):
    _, _, fork_dir = converted["qwen2-tied"]
    pipe = Pipeline.from_pretrained(fork_dir)
    assert isinstance(pipe.ask(torch.zeros(32, 32, 3, dtype=torch.uint8).numpy(), "what color is the circle?", max_new_tokens=4), str)
    codes = pipe.generate_codes("a red circle", n=1, top_k=5)
    assert codes.shape == (1, pipe.model.cfg.image_tokens) and int(codes.max()) < pipe.model.cfg.image_vocab_size
    model, builder = pipe.model.train(), pipe.builder
    icfg = pipe.image_tokenizer.cfg
    images = torch.rand(2, 3, icfg.image_size, icfg.image_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        codes, latents = pipe.image_tokenizer.encode(images), pipe.image_tokenizer.encode_latents(images)
    batch = builder.collate([builder.understand("how many circles?", codes[0], latents[0], "two"),
                             builder.generate("a red circle", codes[1])])  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        out = model(batch)
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert set(out) == {"und", "gen", "loss"} and losses[-1] < losses[0]


@pytest.mark.parametrize("kind", KINDS)
def test_export_round_trip_keeps_transformers_logits(converted, tmp_path, kind):
    hf, _, fork_dir = converted[kind]
    export_hf(fork_dir, tmp_path)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    assert type(back).__name__ == type(hf).__name__ and back.dtype == torch.float32
    model = load_model(fork_dir)
    batch = text_batch([19, 6, 12], model.cfg.text_vocab_size, seed=1)
    diff = max_diff(model, back, batch, model.cfg.text_vocab_size)
    MEASURED[f"export-hf {kind} (all {model.cfg.text_vocab_size} ids) vs fork"] = diff
    assert diff <= TOL
    original = text_batch([19, 6, 12], BPE_SIZE, seed=2)
    with torch.no_grad():
        a = hf(input_ids=original.tokens, attention_mask=original.valid.long(), position_ids=original.positions).logits
        b = back(input_ids=original.tokens, attention_mask=original.valid.long(), position_ids=original.positions).logits
    rows = [i for i in range(hf.config.vocab_size) if not BPE_SIZE <= i < BPE_SIZE + 5]  # all but the new markers
    diff = (a[..., rows] - b[..., rows])[original.valid].abs().max().item()
    MEASURED[f"HF -> fork-hf -> export-hf {kind} vs original HF ({len(rows)} of {hf.config.vocab_size} rows)"] = diff
    assert diff <= TOL


@pytest.mark.parametrize("bias,tied", [(True, False), (False, True)], ids=["qwen2-layout", "llama-layout-tied"])
def test_export_of_a_native_model(tmp_path, image_dir, bias, tied):
    text = TextTokenizer.train(world_corpus(60), vocab_size=280)
    image = ImageTokenizer.load(image_dir)
    cfg = named_config("debug", text_vocab_size=text.vocab_size, image_vocab_size=image.cfg.num_codes, image_tokens=16,
                       image_latent_dim=image.cfg.latent_dim, attention_bias=bias, tie_word_embeddings=tied)  # fmt: skip
    torch.manual_seed(0)
    model = UniFork(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.15)
    save_pretrained(tmp_path / "ckpt", model, text, image)
    export_hf(tmp_path / "ckpt", tmp_path / "hf")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    assert type(back).__name__ == ("Qwen2ForCausalLM" if bias else "LlamaForCausalLM")
    diff = max_diff(model, back, text_batch([30, 11], cfg.text_vocab_size), cfg.text_vocab_size)
    MEASURED[f"export-hf native {'qwen2' if bias else 'llama-tied'} vs ours"] = diff
    assert diff <= TOL
    hf_tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "hf" / "tokenizer.json"))
    sentence = "two large blue squares to the left of a green circle"
    assert hf_tokenizer(sentence, add_special_tokens=False).input_ids == text.encode(sentence)


def test_cli_fork_hf_then_export_hf(converted, tmp_path, capsys):
    _, hf_dir, _ = converted["llama"]
    assert main(["fork-hf", "--model", str(hf_dir), "--fork-layer", "3", "--out", str(tmp_path / "fork")]) == 0
    out = capsys.readouterr()
    assert "UNTRAINED image tokenizer" in out.err and "LlamaForCausalLM" in out.out
    model = load_model(tmp_path / "fork")
    assert (model.cfg.fork_layer, len(model.trunk.layers), len(model.gen.layers)) == (3, 3, 1)
    assert main(["export-hf", "--ckpt", str(tmp_path / "fork"), "--out", str(tmp_path / "hf")]) == 0
    assert "LlamaForCausalLM" in capsys.readouterr().out
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_hidden_layers"] == 4


@pytest.mark.parametrize("sharing", ["x", "shared", "tsts"])
def test_fork_hf_with_any_sharing_plan_keeps_the_hf_logits_both_ways(converted, tmp_path, sharing):
    """Each HF layer lands where the plan puts it (trunk if shared, else und and a copy in gen), and export-hf
    writes the und path back in order."""
    hf, hf_dir, _ = converted["llama"]
    fork_hf(hf_dir, None, tmp_path / "fork", sharing=sharing)
    model = load_model(tmp_path / "fork")
    plan = model.cfg.plan
    assert len(model.trunk.layers) == plan.count("s") and len(model.gen.layers) == plan.count("t")
    diff = max_diff(model, hf, text_batch([23, 9, 17], BPE_SIZE), BPE_SIZE)
    assert diff <= TOL
    hf_state = hf.state_dict()
    for i, layer in enumerate(model.path_layers("gen")):  # gen's path holds the same pretrained weights, in order
        assert torch.equal(layer.mlp.up_proj.weight, hf_state[f"model.layers.{i}.mlp.up_proj.weight"])
    export_hf(tmp_path / "fork", tmp_path / "back")
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert all(torch.equal(back[f"model.layers.{i}.self_attn.q_proj.weight"], hf_state[f"model.layers.{i}.self_attn.q_proj.weight"])
               for i in range(len(plan)))  # fmt: skip


def test_fork_hf_y_needs_the_fork_layer(converted, tmp_path, capsys):
    _, hf_dir, _ = converted["llama"]
    assert main(["fork-hf", "--model", str(hf_dir), "--sharing", "inverted_y", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "splits at a layer: give --fork-layer (0..4)" in err and not (tmp_path / "out").exists()


def _drop_tensor(d):
    state = load_file(str(d / "model.safetensors"))
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(d / "model.safetensors"))


def _edit_config(**changes):
    def edit(d):
        config = json.loads((d / "config.json").read_text())
        config.update(changes)
        (d / "config.json").write_text(json.dumps(config))

    return edit


BROKEN = {  # how to break a good HF directory -> (fork layer, what the one-line error must say)
    "architecture": (_edit_config(architectures=["GPT2LMHeadModel"]), 2, "supports Qwen2ForCausalLM, LlamaForCausalLM"),
    "fork too deep": (None, 5, "--fork-layer must be in [0, 4]"),
    "fork negative": (None, -1, "--fork-layer must be in [0, 4]"),
    "no tokenizer": (lambda d: (d / "tokenizer.json").unlink(), 2, "tokenizer.json"),
    "no config": (lambda d: (d / "config.json").unlink(), 2, "missing"),
    "no weights": (lambda d: (d / "model.safetensors").unlink(), 2, "no model.safetensors"),
    "missing tensor": (_drop_tensor, 2, "missing model.layers.1.mlp.up_proj.weight"),
    "rope scaling": (_edit_config(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5}), 2, "'llama3' RoPE scaling"),
    "wrong shape": (_edit_config(intermediate_size=128), 2, "expected"),
}  # fmt: skip


@pytest.mark.parametrize("case", BROKEN)
def test_fork_hf_errors_are_one_line(converted, tmp_path, capsys, case):
    break_it, fork, message = BROKEN[case]
    model_dir = tmp_path / "model"
    shutil.copytree(converted["qwen2-untied"][1], model_dir)
    if break_it is not None:
        break_it(model_dir)
    assert main(["fork-hf", "--model", str(model_dir), "--fork-layer", str(fork), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_fork_hf_missing_shard_is_one_line(converted, tmp_path, capsys):
    model_dir = tmp_path / "model"
    shutil.copytree(converted["llama"][1], model_dir)
    (model_dir / "model-00002-of-00007.safetensors").unlink()
    assert main(["fork-hf", "--model", str(model_dir), "--fork-layer", "2", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing weight shard" in err, err


def test_export_hf_errors_are_one_line(converted, tmp_path, capsys):
    assert main(["export-hf", "--ckpt", str(tmp_path), "--out", str(tmp_path / "hf")]) == 2
    assert "missing model config" in capsys.readouterr().err
    fork_dir = converted["llama"][2]
    with pytest.raises(UserError, match="must differ"):
        export_hf(fork_dir, fork_dir)


def test_config_flags_are_typed_and_default_to_the_native_layout():
    assert ModelConfig.from_dict({}).attention_bias and not ModelConfig.from_dict({}).tie_word_embeddings
    with pytest.raises(UserError, match="'tie_word_embeddings' .* must be bool"):
        ModelConfig.from_dict({"tie_word_embeddings": 1})
    with pytest.raises(UserError, match="'n_layers' .* must be int"):
        ModelConfig.from_dict({"n_layers": True})


def test_fork_hf_with_a_residual_image_tokenizer_gets_a_depth_head(converted, tmp_path):
    hf, hf_dir, _ = converted["llama"]
    torch.manual_seed(0)
    ImageTokenizer(ImageTokenizerConfig(image_size=32, channels=(16, 32, 64), residual_depth=3)).save(tmp_path / "rq")
    fork_hf(hf_dir, 2, tmp_path / "fork", image_tokenizer_dir=tmp_path / "rq")
    model = load_model(tmp_path / "fork")
    assert model.cfg.residual_depth == 3 and model.gen.depth is not None
    assert max_diff(model, hf, text_batch([23, 9, 17], BPE_SIZE), BPE_SIZE) <= TOL  # the und path is still the LM's
    assert Pipeline.from_pretrained(tmp_path / "fork").generate_codes("a", n=1, seed=0).shape == (1, 16)
