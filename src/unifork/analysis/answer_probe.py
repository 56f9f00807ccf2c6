"""Where a question's answer becomes readable on the understanding path: one linear probe per layer.

For every question of one type (default "relation", yes/no) in world scenes, the residual stream at the
question's last token, where the model starts its answer, is taken after each layer. A softmax-regression probe
fitted on train-split scenes predicts the true answer on unseen test scenes. Readable in some layer while the
model answers at chance: the readout fails. Readable nowhere: the model never computes the answer.

For relation questions the probe can also read where each named object is (`target` "first_position" or
"second_position": its cell in a 3 x 3 grid over the image), which splits a failure in two: the model does not
find the objects, or finds them and does not compare them.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F

from unifork.errors import UserError
from unifork.inference.answers import answer_questions
from unifork.und_images import und_inputs
from unifork.world import World
from unifork.world.questions import relation_objects
from unifork.world.spec import Scene

TARGETS = ("answer", "first_position", "second_position")


def _cell(scene: Scene, question: str, which: int) -> str:
    obj = relation_objects(scene, question)[which]
    third = scene.config.canvas / 3
    return f"row {int(obj.cy // third)} column {int(obj.cx // third)}"


def _questions(split: str, qtype: str, target: str, n_scenes: int, seed: int) -> tuple[list, list[str], list[str], list[str]]:
    """Images, questions, answers and the probe's labels of every `qtype` question in n scenes."""
    world = World(seed=seed, split=split)
    images, questions, answers, labels = [], [], [], []
    for i in range(n_scenes):
        sample = world.sample(i)
        for kind, question, answer in sample.qa:
            if kind == qtype:
                images.append(sample.image)
                questions.append(question)
                answers.append(answer)
                labels.append(answer if target == "answer" else _cell(sample.scene, question, TARGETS.index(target) - 1))
    return images, questions, answers, labels


@torch.no_grad()
def _last_token_states(pipeline, images: list, questions: list[str], batch_size: int) -> torch.Tensor:
    """(n_layers + 1, N, C): each question's last token after the embeddings and after every layer."""
    model, builder = pipeline.model, pipeline.builder
    chunks = []
    for start in range(0, len(questions), batch_size):
        codes, latents = und_inputs(model.cfg, pipeline.image_tokenizer, images[start : start + batch_size], pipeline.device)
        examples = [builder.understand(q, codes[i], None if latents is None else latents[i])
                    for i, q in enumerate(questions[start : start + batch_size])]  # fmt: skip
        batch = builder.collate(examples).to(pipeline.device)  # left-padded: every row ends at its last token
        chunks.append(torch.stack([h[:, -1] for h in model.hidden_states("und", batch)]).float().cpu())
    return torch.cat(chunks, dim=1)


def _fit_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, steps: int, weight_decay: float) -> torch.nn.Linear:
    probe = torch.nn.Linear(x.shape[1], n_classes)
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(x), y) + weight_decay * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe


def answer_probe(pipeline, qtype: str = "relation", n_train: int = 600, n_test: int = 300, seed: int = 0,
                 steps: int = 200, weight_decay: float = 1e-3, batch_size: int = 64, target: str = "answer") -> dict:  # fmt: skip
    """Probe accuracy per layer at reading `target` of test-split questions of `qtype`, beside the model's own
    accuracy at answering them."""
    if target not in TARGETS:
        raise UserError(f"unknown probe target '{target}'; choose one of: {', '.join(TARGETS)}")
    if target != "answer" and qtype != "relation":
        raise UserError(f"probe target '{target}' is an object of a relation question; use it with qtype 'relation', not '{qtype}'")
    train_images, train_q, _, train_y = _questions("train", qtype, target, n_train, seed)
    test_images, test_q, test_a, test_y = _questions("test", qtype, target, n_test, seed)
    labels = sorted(set(train_y))
    index = {a: i for i, a in enumerate(labels)}
    known = [i for i, a in enumerate(test_y) if a in index]  # labels the train split never gives cannot be probed
    y_train = torch.tensor([index[a] for a in train_y])
    y_test = torch.tensor([index[test_y[i]] for i in known])
    train_x = _last_token_states(pipeline, train_images, train_q, batch_size)
    test_x = _last_token_states(pipeline, test_images, test_q, batch_size)[:, known]
    accuracy = []
    for layer in range(train_x.shape[0]):
        mean, std = train_x[layer].mean(0), train_x[layer].std(0) + 1e-6
        probe = _fit_probe((train_x[layer] - mean) / std, y_train, len(labels), steps, weight_decay)
        with torch.no_grad():
            predicted = probe((test_x[layer] - mean) / std).argmax(-1)
        accuracy.append(round((predicted == y_test).float().mean().item(), 4))
    with torch.no_grad():
        codes, latents = und_inputs(pipeline.model.cfg, pipeline.image_tokenizer, test_images, pipeline.device)
        answers = answer_questions(pipeline.model, pipeline.builder, codes, latents, test_q)
    majority = Counter(train_y).most_common(1)[0][0]
    return {
        "qtype": qtype,
        "target": target,
        "layers": list(range(train_x.shape[0])),
        "sharing": pipeline.model.cfg.plan,
        "probe_accuracy": accuracy,
        "model_accuracy": round(sum(p == t for p, t in zip(answers, test_a)) / len(test_a), 4),
        "model_answers": dict(Counter(answers).most_common(5)),
        "majority_baseline": round(sum(y == majority for y in test_y) / len(test_y), 4),  # of the probe's labels
        "n_train": len(train_y),
        "n_test": len(test_y),
    }
