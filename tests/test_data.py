"""Data on disk: every format reads the same records, trains, skips corrupt images, resumes exactly; pretokenized
data gives the raw data's batches; mistakes are one-line errors. Datasets are made here from world scenes."""

import io
import json
import shutil
import subprocess
import sys
from dataclasses import replace

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import webdataset
from PIL import Image
from safetensors.torch import load_file

from unifork.data import open_source, pretokenize
from unifork.data.config import DataConfig
from unifork.data.stream_pool import StreamPool
from unifork.errors import UserError
from unifork.images import fit_image
from unifork.model.config import named_config
from unifork.sequences import SequenceBuilder
from unifork.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
from unifork.tokenizers.text import TextTokenizer
from unifork.train.recipe import StageConfig, load_recipe
from unifork.train.trainer import train
from unifork.world import World

N = 16  # records per dataset
CORRUPT = {3: "truncated", 9: "not an image"}  # record index -> how its image is broken, in the `dirty` folder

RECIPE = """
seed = 0
tokenizer_dir = "{tok}"
[model]
size = "debug"
[data]
source = "{source}"
shuffle_buffer = {buffer}
[[stages]]
name = "joint"
steps = {steps}
batch_size = 6
lr = 3e-3
warmup = 1
mix = {{ und = 0.5, gen = 0.5 }}
save_every = 2
"""


def png(array) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def scenes(n=N):
    """(png bytes, captions, [(question, answer)]) of world train scenes 0..n-1."""
    world = World(seed=0)
    return [(png(s.image), [c for _, c in s.captions], [(q, a) for _, q, a in s.qa]) for s in map(world.sample, range(n))]


def write_folder(root, records, corrupt=None):
    (root / "img").mkdir(parents=True)
    with open(root / "records.jsonl", "w") as f:
        for i, (image, captions, qa) in enumerate(records):
            how = (corrupt or {}).get(i)
            data = image[: len(image) // 2] if how == "truncated" else b"not an image" if how else image
            (root / "img" / f"{i:03d}.png").write_bytes(data)
            caption = captions[0] if i % 2 else captions  # both spellings of the schema: a string, a list
            f.write(json.dumps({"image": f"img/{i:03d}.png", "caption": caption,
                                "qa": [{"question": q, "answer": a} for q, a in qa]}) + "\n")  # fmt: skip
    return root


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same scenes as folder, webdataset (2 shards), hf save_to_disk and parquet (2 files, 4 row groups)."""
    root, records = tmp_path_factory.mktemp("data"), scenes()
    write_folder(root / "folder", records)
    (root / "wds").mkdir()
    for shard in range(2):
        with webdataset.TarWriter(str(root / "wds" / f"part-{shard:03d}.tar")) as sink:
            for i in range(shard * N // 2, (shard + 1) * N // 2):
                image, captions, qa = records[i]
                text = json.dumps({"captions": captions, "qa": [[q, a] for q, a in qa]}).encode()
                sink.write({"__key__": f"{i:06d}", "png": image, "json": text})
    table = {"image": [r[0] for r in records], "captions": [r[1] for r in records],
             "qa": [[{"question": q, "answer": a} for q, a in r[2]] for r in records]}  # fmt: skip
    ds = datasets.Dataset.from_dict({**table, "image": [{"bytes": b, "path": None} for b in table["image"]]})
    ds.cast_column("image", datasets.Image()).save_to_disk(str(root / "hf"))
    (root / "parquet").mkdir()
    for part in range(2):  # one question-answer pair per row: the question/answer column form
        rows = records[part * N // 2 : (part + 1) * N // 2]
        pq.write_table(pa.table({"image": [r[0] for r in rows], "caption": [r[1][0] for r in rows],
                                 "question": [r[2][0][0] for r in rows], "answer": [r[2][0][1] for r in rows]}),
                       root / "parquet" / f"part-{part}.parquet", row_group_size=4)  # fmt: skip
    return {"folder": f"folder:{root / 'folder'}", "webdataset": f"webdataset:{root / 'wds'}/part-{{000..001}}.tar",
            "hf": f"hf:{root / 'hf'}", "parquet": f"parquet:{root / 'parquet'}/*.parquet", "root": root}  # fmt: skip


@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    """A folder source whose records 3 and 9 have a truncated PNG and a file of non-image bytes."""
    return f"folder:{write_folder(tmp_path_factory.mktemp('dirty'), scenes(), CORRUPT)}"


def all_records(spec):
    source = open_source(spec)
    return [r for shard in range(len(source.shards())) for r in source.read(shard)]


def test_every_format_reads_the_same_records(sources):
    expected = scenes()
    for name in ("folder", "webdataset", "hf", "parquet"):
        records = all_records(sources[name])
        assert len(records) == N, name
        for i, (record, (image, captions, qa)) in enumerate(zip(records, expected)):
            assert (fit_image(record.image, 64) == fit_image(image, 64)).all(), (name, record.key)
            one_caption = name == "parquet" or (name == "folder" and i % 2)  # written as a single string
            assert list(record.captions) == (captions[:1] if one_caption else captions), name
            assert list(record.qa) == (qa[:1] if name == "parquet" else qa), name


def test_images_are_cropped_resized_and_made_rgb():
    wide = Image.new("RGBA", (96, 48), (255, 0, 0, 0))  # transparent red: composited on white
    wide.paste((0, 0, 255, 255), (24, 0, 72, 48))  # a blue square in the centre
    out = fit_image(png(np.asarray(wide)), 32)
    assert out.shape == (32, 32, 3) and out.dtype.name == "uint8"
    assert (out[16, 16] == (0, 0, 255)).all()  # the centre crop keeps the square, the side strips are gone
    assert (fit_image(Image.new("L", (40, 40), 7), 40) == 7).all()  # greyscale to RGB, no resize at the same size


def make_pool(source, tokenizer_dir, buffer=5, tokenizer=None):
    text = TextTokenizer.load(tokenizer_dir)
    tokenizer = tokenizer or ImageTokenizer.load(tokenizer_dir)
    cfg = replace(named_config("debug"), text_vocab_size=text.vocab_size, image_vocab_size=tokenizer.cfg.num_codes,
                  image_tokens=tokenizer.cfg.grid**2, image_latent_dim=tokenizer.cfg.latent_dim)  # fmt: skip
    data = DataConfig(source=source, shuffle_buffer=buffer, caption_dropout=0.3)
    return StreamPool(data, tokenizer, SequenceBuilder(text, cfg), announce=False)


STAGE = StageConfig(name="s", steps=100, batch_size=6, mix={"und": 0.5, "gen": 0.5})


def same_batch(a, b, latents_atol=0.0):
    for name in ("tokens", "kinds", "valid", "task", "targets"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    # the tokenizer's convolutions round differently for different batch sizes: latents agree to float rounding
    assert torch.allclose(a.latents, b.latents, atol=latents_atol, rtol=0)


def test_stream_resumes_exactly_across_epochs(dirty, tokenizer_dir):
    straight = make_pool(dirty, tokenizer_dir)
    batches = [straight.batch(STAGE, 0, step) for step in range(8)]  # 24 und + 24 gen rows: past two epochs
    cut = make_pool(dirty, tokenizer_dir)
    for step in range(3):
        cut.batch(STAGE, 0, step)
    state = cut.state_dict()
    assert len(json.dumps(state)) < 1000  # a small position, not the data
    resumed = make_pool(dirty, tokenizer_dir)
    resumed.load_state_dict(state)
    for step in range(3, 8):
        same_batch(resumed.batch(STAGE, 0, step), batches[step])
    assert resumed.metrics() == straight.metrics() and straight.metrics()["skipped_corrupt"] >= 4


def test_pretokenized_gives_the_raw_batches(dirty, sources, tokenizer_dir, tmp_path):
    meta = pretokenize(dirty, tokenizer_dir, tmp_path / "pre", progress=False)
    assert (meta["records"], meta["corrupt"]) == (N, len(CORRUPT))
    pretokenize(sources["webdataset"], tokenizer_dir, tmp_path / "wds", progress=False)  # two shards
    skipped = []
    for source, out in ((dirty, "pre"), (sources["webdataset"], "wds")):
        raw, pre = make_pool(source, tokenizer_dir), make_pool(f"pretokenized:{tmp_path / out}", tokenizer_dir)
        for step in range(6):
            same_batch(raw.batch(STAGE, 0, step), pre.batch(STAGE, 0, step), latents_atol=1e-5)
        assert raw.metrics() == pre.metrics()
        skipped.append(raw.metrics()["skipped_corrupt"])
    assert skipped[0] > 0 and skipped[1] == 0
    codes_only = pretokenize(dirty, tokenizer_dir, tmp_path / "codes", latents=False, progress=False)
    assert "latents" not in load_file(str(tmp_path / "codes" / "shard-00000.safetensors")) and codes_only["latents"] is False
    with pytest.raises(UserError, match="holds codes only"):
        make_pool(f"pretokenized:{tmp_path / 'codes'}", tokenizer_dir)
    torch.manual_seed(1)
    other = ImageTokenizer(ImageTokenizerConfig(channels=(16, 32, 64)))
    with pytest.raises(UserError, match="another image tokenizer"):
        make_pool(f"pretokenized:{tmp_path / 'pre'}", tokenizer_dir, tokenizer=other)


def test_text_longer_than_the_context_is_cut_or_skipped(tokenizer_dir, tmp_path):
    (image, captions, qa), long_text = scenes(1)[0], " ".join(["red"] * 400)
    folder = write_folder(tmp_path / "long", [(image, [long_text], [("what is it?", long_text)]), (image, captions, qa)])
    pool = make_pool(f"folder:{folder}", tokenizer_dir)
    batch = pool.batch(STAGE, 0, 0)  # collate would refuse a row longer than the context
    assert batch.tokens.shape[1] <= pool.builder.cfg.max_seq_len
    assert pool.metrics()["skipped_too_long"] > 0  # the long answer's record makes no und row


def unpadded(batch) -> list[list[int]]:
    return [row[valid].tolist() for row, valid in zip(batch.tokens, batch.valid)]


def test_ranks_share_the_global_batch(dirty, tokenizer_dir):
    """Each rank's pool reads the same stream and keeps its rows of the global batch (data order is world-size free)."""
    whole, ranks = make_pool(dirty, tokenizer_dir), [make_pool(dirty, tokenizer_dir) for _ in range(2)]
    stage = replace(STAGE, batch_size=5)
    for step in range(3):
        parts = [pool.rank_batch(stage, 0, step, rank, 2) for rank, pool in enumerate(ranks)]
        kept = [row for p in parts for row in unpadded(p.batch)[: p.real_rows]]
        assert kept == unpadded(whole.batch(stage, 0, step))
        # 3 und rows then 2 gen rows: rank 0 holds und rows only, so it adds a gen stand-in
        assert [p.real_rows for p in parts] == [2, 3] and [len(p.batch.tokens) for p in parts] == [3, 3]


@pytest.mark.parametrize("fmt", ["folder", "webdataset", "hf", "parquet", "pretokenized"])
def test_training_runs_from_each_format(fmt, sources, tokenizer_dir, tmp_path):
    source = sources.get(fmt)
    if fmt == "pretokenized":
        pretokenize(sources["webdataset"], tokenizer_dir, tmp_path / "pre", progress=False)
        source = f"pretokenized:{tmp_path / 'pre'}"
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.format(tok=tokenizer_dir, source=source, buffer=8, steps=2))
    assert train(recipe, tmp_path / "run", progress=False) is not None
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [1, 2] and all(r["und"] > 0 and r["gen"] > 0 for r in records)
    assert records[-1]["skipped_corrupt"] == 0


def test_training_skips_and_counts_corrupt_images_and_resumes_exactly(dirty, tokenizer_dir, tmp_path):
    recipe = tmp_path / "r.toml"
    gen_stage = '[[stages]]\nname = "gen"\nsteps = 2\nbatch_size = 6\nmix = { gen = 1.0 }\n'
    recipe.write_text(RECIPE.format(tok=tokenizer_dir, source=dirty, buffer=5, steps=5).replace("[[stages]]", gen_stage + "[[stages]]"))
    train(recipe, tmp_path / "straight", progress=False)
    # cut at the stage boundary (the next stage reads on from the finished one's position), then mid-stage
    assert train(recipe, tmp_path / "cut", progress=False, max_steps=2) is None
    shutil.rmtree(tmp_path / "cut" / "stages" / "joint")  # as if killed right after the first stage finished
    assert train(recipe, tmp_path / "cut", resume=True, progress=False, max_steps=3) is None
    train(recipe, tmp_path / "cut", resume=True, progress=False)
    logs = {run: [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").open()] for run in ("straight", "cut")}
    assert logs["straight"] == [dict(r, tokens_per_s=s["tokens_per_s"]) for r, s in zip(logs["cut"], logs["straight"])]
    counts = [r["skipped_corrupt"] for r in logs["straight"]]
    assert counts == sorted(counts) and counts[-1] >= len(CORRUPT)  # 27 good gen rows: both bad images met
    a = load_file(str(tmp_path / "straight" / "checkpoint" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mistakes_are_one_line_errors(sources, tokenizer_dir, tmp_path):
    recipe = tmp_path / "r.toml"
    for source, message in [("s3:bucket/data", "unknown data source 's3:bucket/data'; use world, folder:PATH, webdataset:GLOB"),
                            ("folder:/no/such/dir", "no such file or folder /no/such/dir"),
                            ("webdataset:/no/shards-*.tar", "no files match /no/shards-*.tar")]:  # fmt: skip
        recipe.write_text(RECIPE.format(tok=tokenizer_dir, source=source, buffer=8, steps=1))
        with pytest.raises(UserError, match=message.replace("*", r"\*")):
            load_recipe(recipe)
    captions_only = tmp_path / "captions"
    captions_only.mkdir()
    (captions_only / "r.jsonl").write_text(json.dumps({"image": "a.png", "caption": "a red circle"}) + "\n")
    with pytest.raises(UserError, match="has no records with questions and answers"):
        make_pool(f"folder:{captions_only}", tokenizer_dir).batch(STAGE, 0, 0)
    broken = write_folder(tmp_path / "broken", scenes(2), {0: "truncated", 1: "not an image"})
    with pytest.raises(UserError, match="no usable record for und rows in a whole epoch"):
        make_pool(f"folder:{broken}", tokenizer_dir).batch(STAGE, 0, 0)  # an error, not an endless loop
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"image": [b""]})}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(UserError, match="holds the splits train; name one"):
        open_source(f"hf:{tmp_path / 'dd'}")
    with pytest.raises(UserError, match="exists and is not an empty folder"):
        pretokenize(sources["folder"], tokenizer_dir, sources["root"], progress=False)  # never write into the data
    result = subprocess.run([sys.executable, "-m", "unifork.cli", "data", "pretokenize", "--source", "webdataset:/no/*.tar",
                             "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "p")],
                            check=False, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and result.stderr == "error: data source 'webdataset:/no/*.tar': no files match /no/*.tar\n"
