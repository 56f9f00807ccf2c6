"""The world's training questions can be shaped (relation twins, a subset of types) without touching evaluation,
and the default mix stays exactly what it was."""

from dataclasses import replace

import numpy as np
import pytest

from unifork.data.config import DataConfig
from unifork.data.world_pool import WorldPool
from unifork.errors import UserError
from unifork.model import named_config
from unifork.sequences import SequenceBuilder
from unifork.tokenizers.image import ImageTokenizer
from unifork.tokenizers.text import TextTokenizer
from unifork.train.recipe import StageConfig, load_recipe
from unifork.world import World
from unifork.world.questions import opposite_question, relation_objects
from unifork.world.relations import relation_holds

pytestmark = pytest.mark.usefixtures("one_thread")
STAGE = StageConfig(name="und", steps=10, batch_size=16, mix={"und": 1.0})


PHRASES = {"to the left of": "left of", "to the right of": "right of", "above": "above", "below": "below"}


def parse(question: str) -> tuple[str, str, str]:
    """"is A <phrase> B?" -> (A, relation, B)."""
    body = question[len("is ") : -1]
    phrase = next(p for p in PHRASES if f" {p} " in body)
    a, b = body.split(f" {phrase} ")
    return a, PHRASES[phrase], b


def test_a_relation_twin_asks_the_opposite_relation_and_flips_the_answer():
    world, checked = World(seed=0, split="train"), 0
    for i in range(200):
        sample = world.sample(i)
        by_name = {f"the {o.color} {o.shape}": o for o in sample.scene.objects}
        for qtype, question, answer in sample.qa:
            if qtype != "relation":
                continue
            twin, twin_answer = opposite_question(question, answer)
            (a, relation, b), (twin_a, twin_relation, twin_b) = parse(question), parse(twin)
            assert relation_objects(sample.scene, question) == (by_name[a], by_name[b])  # what probes locate
            assert (twin_a, twin_b) == (a, b) and twin_relation != relation and {answer, twin_answer} == {"yes", "no"}
            assert relation_holds(by_name[a], twin_relation, by_name[b]) == (twin_answer == "yes")  # still unarguable
            checked += 1
    assert checked > 100
    with pytest.raises(ValueError, match="not a relation question"):
        opposite_question("what color is the circle?", "red")


def pool(tokenizer_dir, **data):
    text = TextTokenizer.load(tokenizer_dir)
    tokenizer = ImageTokenizer.load(tokenizer_dir)
    cfg = replace(named_config("debug"), text_vocab_size=text.vocab_size, image_vocab_size=tokenizer.cfg.num_codes,
                  image_tokens=tokenizer.cfg.grid**2, image_latent_dim=tokenizer.cfg.latent_dim, max_seq_len=256)  # fmt: skip
    return WorldPool(DataConfig(pool_size=64, **data), tokenizer, SequenceBuilder(text, cfg))


def test_relation_pairs_follow_each_relation_question_with_its_twin(tokenizer_dir):
    plain, paired = pool(tokenizer_dir), pool(tokenizer_dir, relation_pairs=True)
    twins = 0
    for step in range(5):
        for a, b in zip(plain.plan(STAGE, 0, step), paired.plan(STAGE, 0, step)):
            assert a.sample == b.sample  # the same draws: only the turns differ
            expected = []
            for question, answer in a.turns:
                expected.append((question, answer))
                if question.startswith("is "):
                    expected.append(opposite_question(question, answer))
                    twins += 1
            assert list(b.turns) == expected
    assert twins > 5


def test_question_types_keep_only_those_types(tokenizer_dir):
    only = pool(tokenizer_dir, question_types=("relation",))
    rows = [row for step in range(5) for row in only.plan(STAGE, 0, step)]
    assert rows and all(q.startswith("is ") and a in ("yes", "no") for row in rows for q, a in row.turns)
    assert all(only.qa[row.sample] for row in rows)  # samples without relation questions are never drawn
    examples = only.build(rows[:4])
    assert all(np.sum(np.array(e.targets) >= 0) >= 2 for e in examples)  # answers and EOS carry the loss


def test_the_default_mix_is_unchanged(tokenizer_dir):
    default = pool(tokenizer_dir)
    world = World(seed=0, split="train")
    assert [[(q, a) for q, a in [(q, a) for _, q, a in world.sample(i).qa]] for i in range(64)] == [
        [(q, a) for _, q, a in qa] for qa in default.qa
    ]
    assert default.und_sample == list(range(64))


def test_bad_question_mixes_are_one_line(tmp_path):
    for table, message in [('question_types = ["colour"]', "question_types of"),
                           ('source = "folder:/x"\nrelation_pairs = true', "shape the world's questions")]:  # fmt: skip
        if "folder" in table:
            (tmp_path / "x").mkdir(exist_ok=True)
            table = table.replace("/x", str(tmp_path / "x"))
        (tmp_path / "r.toml").write_text(f"[data]\n{table}\n[[stages]]\nname = \"s\"\nsteps = 1\n")
        with pytest.raises(UserError, match=message):
            load_recipe(tmp_path / "r.toml")
