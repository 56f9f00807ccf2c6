"""Per-layer alignment analysis: the mutual k-NN metric's invariants, hidden states, the model / HF / feature
sources, the plot and the `unifork align` CLI."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from unifork.analysis import (
    chance_alignment,
    feature_alignment,
    hf_alignment,
    layerwise_alignment,
    model_alignment,  # fmt: skip
    mutual_knn_alignment,
)
from unifork.analysis.knn_alignment import knn_indices
from unifork.analysis.model_alignment import (
    caption_masks,
    generate_from_caption,
    left_pad,
    path_features,
    understand_caption,  # fmt: skip
    world_pairs,
)
from unifork.analysis.pooling import pool
from unifork.checkpoint import save_pretrained
from unifork.cli import main
from unifork.errors import UserError
from unifork.inference import Pipeline
from unifork.model.config import named_config
from unifork.model.unifork import CODE, LATENT, UniFork
from unifork.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
from unifork.tokenizers.text import TextTokenizer

N, K = 200, 10


def gaussian(n, d, seed):
    return np.random.default_rng(seed).standard_normal((n, d))


# --- the metric ------------------------------------------------------------------------------------------------


def test_identical_spaces_align_fully():
    a = gaussian(N, 16, 0)
    assert mutual_knn_alignment(a, a.copy(), K) == 1.0


def test_rotation_and_positive_scaling_keep_full_alignment():
    a = gaussian(N, 16, 0)
    rotation, _ = np.linalg.qr(gaussian(16, 16, 1))  # random orthogonal matrix
    scale = np.random.default_rng(2).uniform(0.1, 10.0, size=(N, 1))  # cosine ignores each row's length
    assert mutual_knn_alignment(a, (a @ rotation) * scale, K) == 1.0
    # a different width is fine: the spaces only need the same samples
    assert mutual_knn_alignment(a, np.concatenate([a, np.zeros((N, 5))], axis=1), K) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_independent_spaces_align_at_chance(seed):
    chance = chance_alignment(N, K)  # 0.050
    value = mutual_knn_alignment(gaussian(N, 16, seed), gaussian(N, 24, seed + 10), K)
    assert chance - 0.02 < value < chance + 0.02


def test_permuted_pairing_aligns_at_chance():
    a = gaussian(N, 16, 0)
    shuffled = a[np.random.default_rng(3).permutation(N)]  # the same space, but rows paired with the wrong sample
    assert abs(mutual_knn_alignment(a, shuffled, K) - chance_alignment(N, K)) < 0.02


def test_torch_and_numpy_inputs_agree_and_ties_go_to_the_lower_index():
    a = gaussian(50, 8, 0)
    assert mutual_knn_alignment(torch.from_numpy(a).float(), a, 5) == 1.0
    same = np.ones((40, 3))  # every pair ties; above 16 columns an unstable sort scrambles ties on CPU
    expected = [[1, 2], [0, 2], *[[0, 1]] * 38]
    assert knn_indices(torch.from_numpy(same), 2).tolist() == expected


@pytest.mark.parametrize(
    "a, b, k, message",
    [
        (np.ones((10, 4)), np.ones((10, 4)), 10, "more samples than k"),
        (np.ones((10, 4)), np.ones((9, 4)), 3, "same number of samples"),
        (np.ones((10, 4)), np.ones((10, 4)), 0, "positive integer"),
        (np.ones(10), np.ones((10, 4)), 3, "2-D"),
        (np.full((10, 4), np.nan), np.ones((10, 4)), 3, "NaN"),
    ],
)
def test_bad_inputs_are_user_errors(a, b, k, message):
    with pytest.raises(UserError, match=message):
        mutual_knn_alignment(a, b, k)


def test_layerwise_compares_one_space_with_every_layer():
    a = gaussian(40, 8, 0)
    stack = np.stack([a, gaussian(40, 8, 1), a * 3])  # (layers, N, D)
    values = layerwise_alignment(a, stack, 4)
    assert values[0] == values[2] == 1.0 and values[1] < 0.5
    assert layerwise_alignment(stack, stack, 4) == [1.0, 1.0, 1.0]
    with pytest.raises(UserError, match="layers"):
        layerwise_alignment(stack, stack[:2], 4)


def test_pool_mean_and_last():
    states = torch.arange(12.0).reshape(1, 4, 3).repeat(2, 1, 1)  # (B=2, T=4, C=3)
    positions = torch.tensor([[False, True, True, False], [True, False, False, False]])
    assert pool(states, positions, "mean").tolist() == [[4.5, 5.5, 6.5], [0.0, 1.0, 2.0]]
    assert pool(states, positions, "last").tolist() == [[6.0, 7.0, 8.0], [0.0, 1.0, 2.0]]
    with pytest.raises(UserError, match="pooling"):
        pool(states, positions, "max")


# --- a tiny UniFork ---------------------------------------------------------------------------------------------


def tiny_pipeline(tokenizer_dir, und_input="latents", tasks=("und", "gen")) -> Pipeline:
    """A random debug-size model over 32 px images (16 codes each); larger weights than the init so that the
    hidden states differ between samples."""
    text = TextTokenizer.load(tokenizer_dir)
    torch.manual_seed(0)
    image = ImageTokenizer(ImageTokenizerConfig(image_size=32, channels=(16, 32, 64))).eval()
    icfg = image.cfg
    cfg = named_config("debug", text_vocab_size=text.vocab_size, image_vocab_size=icfg.num_codes,
                       image_tokens=icfg.grid**2, image_latent_dim=icfg.latent_dim, und_input=und_input)  # fmt: skip
    torch.manual_seed(0)
    model = UniFork(cfg, tasks=tasks).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.1)
    return Pipeline(model, text, image)


@pytest.fixture(scope="module")
def pipe(tokenizer_dir):
    return tiny_pipeline(tokenizer_dir)


@pytest.fixture(scope="module")
def ckpt(pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("align_ckpt")
    save_pretrained(out, pipe.model, pipe.text_tokenizer, pipe.image_tokenizer)
    return out


def world_batch(pipe, task, n=3):
    captions, codes, latents = world_pairs(pipe, n, "test", 0, 64)
    if task == "und":
        examples = [understand_caption(pipe.builder, codes[i], None if latents is None else latents[i], captions[i]) for i in range(n)]  # fmt: skip
    else:
        examples = [generate_from_caption(pipe.builder, codes[i], captions[i]) for i in range(n)]
    return captions, examples


@pytest.mark.parametrize("task", ["und", "gen"])
def test_hidden_states_end_in_the_logits(pipe, task):
    model = pipe.model
    _, examples = world_batch(pipe, task)
    batch = pipe.builder.collate(examples)
    with torch.no_grad():
        states = model.hidden_states(task, batch)
        branch = model.branch(task)
        logits = branch.head(branch.norm(states[-1]))
        expected = model.logits(task, batch)
    assert len(states) == model.cfg.n_layers + 1
    assert all(s.shape == (*batch.tokens.shape, model.cfg.d_model) for s in states)
    torch.testing.assert_close(logits, expected)


def test_hidden_states_share_the_trunk_and_fork_after_it(pipe):
    _, examples = world_batch(pipe, "gen")
    batch = pipe.builder.collate(examples)
    with torch.no_grad():
        und, gen = pipe.model.hidden_states("und", batch), pipe.model.hidden_states("gen", batch)
    fork = pipe.model.cfg.plan.index("t")  # the first per-task layer
    assert all(torch.equal(u, g) for u, g in zip(und[: fork + 1], gen[: fork + 1]))
    assert not torch.allclose(und[fork + 1], gen[fork + 1])


@pytest.mark.parametrize("task", ["und", "gen"])
def test_sequences_hold_the_caption_and_the_whole_image(pipe, task):
    captions, examples = world_batch(pipe, task)
    lengths = [len(pipe.text_tokenizer.encode(c)) for c in captions]
    batch = pipe.builder.collate(examples)
    caption_positions = left_pad(caption_masks(task, examples, lengths), batch.tokens.shape[1])
    for row, caption in enumerate(captions):
        assert batch.tokens[row][caption_positions[row]].tolist() == pipe.text_tokenizer.encode(caption)
    image_kind = LATENT if task == "und" else CODE  # the tiny model reads latents for understanding
    assert ((batch.kinds == image_kind).sum(dim=1) == pipe.model.cfg.image_tokens).all()


def test_features_do_not_depend_on_the_batch_size(pipe):
    captions, examples = world_batch(pipe, "und", n=5)
    masks = caption_masks("und", examples, [len(pipe.text_tokenizer.encode(c)) for c in captions])
    with torch.no_grad():
        whole = path_features(pipe.model, pipe.builder, "und", examples, masks, "mean", 64)
        chunked = path_features(pipe.model, pipe.builder, "und", examples, masks, "mean", 2)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_model_alignment_per_layer_is_valid_and_deterministic(pipe):
    result = model_alignment(pipe, n=32, k=4)
    layers = pipe.model.cfg.n_layers + 1
    assert result["layers"] == list(range(layers)) and result["sharing"] == pipe.model.cfg.plan
    assert result["paths"] == ["und", "gen"] and result["n_samples"] == 32 and result["k"] == 4
    for path in ("und", "gen"):
        assert len(result[path]) == layers
        assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in result[path])
    assert model_alignment(pipe, n=32, k=4) == result


@pytest.mark.parametrize("und_input, tasks", [("codes", ("und", "gen")), ("latents", ("gen",)), ("latents", ("und",))])
def test_model_alignment_with_code_input_or_one_branch(tokenizer_dir, und_input, tasks):
    result = model_alignment(tiny_pipeline(tokenizer_dir, und_input, tasks), n=16, k=3, pooling="last")
    assert result["paths"] == list(tasks)
    assert all(len(result[t]) == 5 for t in tasks) and not {"und", "gen"} - set(tasks) & result.keys()


def test_model_alignment_rejects_too_few_samples(pipe):
    with pytest.raises(UserError, match="N=5 samples for k=10"):
        model_alignment(pipe, n=5, k=10)


# --- any Hugging Face causal LM ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_model_dir(tokenizer_dir, tmp_path_factory):
    """A random 2-layer Qwen2 with our world tokenizer, saved like any local HF model (no network needed)."""
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    text = TextTokenizer.load(tokenizer_dir)
    out = tmp_path_factory.mktemp("qwen2")
    PreTrainedTokenizerFast(tokenizer_object=text.tokenizer, bos_token="<|bos|>", eos_token="<|eos|>",
                            pad_token="<|pad|>").save_pretrained(out)  # fmt: skip
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=text.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(out)
    return out


# lengths from 1 to 12 tokens, so batches are padded
TEXTS = [f"{n} {color} {shape}" for n in ("a", "two", "three") for color in ("red", "blue", "green", "purple")
         for shape in ("circles", "squares")] + ["red", "a large blue square to the left of a small green circle"]  # fmt: skip


def test_hf_text_features_match_unpadded_runs(hf_model_dir):
    from unifork.analysis.hf_alignment import load_causal_lm, text_features

    model, tokenizer = load_causal_lm(hf_model_dir, "cpu")
    with torch.no_grad():
        batched = text_features(model, tokenizer, TEXTS, "mean", batch_size=8)  # right-padded rows
        for i in (0, len(TEXTS) - 2, len(TEXTS) - 1):  # the last batch pads "red" to 12 tokens
            alone = text_features(model, tokenizer, [TEXTS[i]], "mean", batch_size=1)
            torch.testing.assert_close(batched[:, i], alone[:, 0], atol=1e-5, rtol=1e-4)
    assert batched.shape == (3, len(TEXTS), 32)  # embeddings + 2 layers


def test_hf_pooling_leaves_out_special_tokens(hf_model_dir):
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    from unifork.analysis.hf_alignment import load_causal_lm, text_features

    model, _ = load_causal_lm(hf_model_dir, "cpu")
    tokenizer = AutoTokenizer.from_pretrained(hf_model_dir)
    bos = tokenizer.convert_tokens_to_ids("<|bos|>")  # prepend BOS, as Llama-style tokenizers do
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", bos)])
    ids = tokenizer(TEXTS[-1])["input_ids"]
    assert ids[0] == bos
    with torch.no_grad():
        pooled = text_features(model, tokenizer, [TEXTS[-1]], "mean", 1)[:, 0]
        states = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    torch.testing.assert_close(pooled, torch.stack([h[0, 1:].mean(dim=0) for h in states]))


def test_hf_alignment_finds_its_own_layer(hf_model_dir):
    from unifork.analysis.hf_alignment import load_causal_lm, text_features

    model, tokenizer = load_causal_lm(hf_model_dir, "cpu")
    with torch.no_grad():
        layer_one = text_features(model, tokenizer, TEXTS, "mean", 32)[1].numpy()
    result = hf_alignment(hf_model_dir, TEXTS, layer_one, k=3)
    assert result["paths"] == ["lm"] and len(result["lm"]) == 3 and result["lm"][1] == 1.0
    with pytest.raises(UserError, match="rows of image features"):
        hf_alignment(hf_model_dir, TEXTS[:-1], layer_one, k=3)


def test_hf_alignment_names_a_bad_model_dir(tmp_path):
    with pytest.raises(UserError, match="cannot load a Hugging Face causal LM"):
        hf_alignment(tmp_path, TEXTS, gaussian(len(TEXTS), 4, 0), k=3)


# --- user-supplied features, the plot and the CLI ---------------------------------------------------------------


def test_feature_alignment_broadcasts_a_single_space():
    image = gaussian(30, 8, 0)
    text = np.stack([gaussian(30, 8, 1), image])  # (layers, N, D)
    result = feature_alignment(image, text, k=3)
    assert result["layers"] == [0, 1] and result["features"][1] == 1.0


def test_cli_align_checkpoint_writes_json_and_plot(ckpt, tmp_path, capsys):
    out, plot = tmp_path / "a.json", tmp_path / "a.png"
    args = ["align", "--ckpt", str(ckpt), "--out", str(out), "--plot", str(plot), "--n", "24", "--k", "3"]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["source"] == {"ckpt": str(ckpt)} and len(result["und"]) == len(result["gen"]) == 5
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size[0] > 400
    assert str(out) in capsys.readouterr().out


def test_cli_align_hf_model_and_features(hf_model_dir, tmp_path):
    (texts := tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    np.save(feats := tmp_path / "feats.npy", gaussian(len(TEXTS), 6, 0))
    assert main(["align", "--hf-model", str(hf_model_dir), "--texts", str(texts), "--image-features", str(feats),
                 "--k", "3", "--out", str(tmp_path / "hf.json")]) == 0  # fmt: skip
    assert len(json.loads((tmp_path / "hf.json").read_text())["lm"]) == 3
    np.savez(pairs := tmp_path / "pairs.npz", image=gaussian(20, 4, 0), text=gaussian(20, 5, 1)[None])
    assert main(["align", "--features", str(pairs), "--k", "3", "--out", str(tmp_path / "f.json"),
                 "--plot", str(tmp_path / "f.png")]) == 0  # fmt: skip
    assert (tmp_path / "f.png").is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "exactly one feature source"),
        (["--ckpt", "x", "--features", "y.npz"], "--ckpt and --features"),
        (["--hf-model", "m", "--texts", "t.txt"], "--hf-model needs --texts"),
        (["--features", "pairs.npz", "--texts", "t.txt"], "--texts only go with --hf-model"),
        (["--features", "missing.npz"], "no such features file"),
        (["--ckpt", "nope"], "no such checkpoint directory"),
    ],
)
def test_cli_align_errors_are_one_line(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    assert main(["align", *extra, "--out", "a.json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("error: ") and message in captured.err
    assert not (tmp_path / "a.json").exists()


def test_answer_probe_reads_a_separable_answer_and_runs_on_a_checkpoint(ckpt, tmp_path, capsys):
    from unifork.analysis.answer_probe import _fit_probe
    from unifork.cli import main

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g)
    y = (x[:, 3] > 0).long()  # the answer sits on one axis
    probe = _fit_probe(x, y, 2, steps=100, weight_decay=1e-4)
    assert (probe(x).argmax(-1) == y).float().mean() > 0.97
    assert main(["probe", "--ckpt", str(ckpt), "--out", str(tmp_path / "p.json"), "--n-train", "40", "--n-test", "20"]) == 0
    result = json.loads((tmp_path / "p.json").read_text())
    assert len(result["probe_accuracy"]) == result["layers"][-1] + 1 and 0 <= result["model_accuracy"] <= 1
    assert "probe accuracy per layer" in capsys.readouterr().out
    assert main(["probe", "--ckpt", str(ckpt), "--out", str(tmp_path / "q.json"), "--qtype", "colour"]) == 2
    # Where the first named object of each relation question is: one of 9 cells, so chance sits far below "yes"/"no"'s.
    assert main(["probe", "--ckpt", str(ckpt), "--out", str(tmp_path / "c.json"), "--target", "first_position",
                 "--n-train", "40", "--n-test", "20"]) == 0  # fmt: skip
    cells = json.loads((tmp_path / "c.json").read_text())
    assert cells["target"] == "first_position" and cells["majority_baseline"] < 0.5
    assert cells["n_test"] == result["n_test"] and cells["model_accuracy"] == result["model_accuracy"]
    capsys.readouterr()
    for extra, message in ((["--target", "place"], "unknown probe target 'place'"),
                           (["--target", "second_position", "--qtype", "color"], "use it with qtype 'relation'")):  # fmt: skip
        assert main(["probe", "--ckpt", str(ckpt), "--out", str(tmp_path / "e.json"), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "e.json").exists()
