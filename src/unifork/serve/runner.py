"""The model side of the server: what the engine's worker thread runs, and the checks that need the model."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from PIL import Image

from unifork.errors import UserError
from unifork.inference.answers import AnswerRequest
from unifork.inference.pipeline import Pipeline
from unifork.inference.sampler import CodeRequest, sample_codes_per_request
from unifork.inference.settings import DEFAULT_ANSWER_TOKENS, SamplingSettings
from unifork.serve.errors import FieldError
from unifork.serve.limits import MAX_SEED
from unifork.serve.schemas import GenerateRequest


@dataclass(frozen=True)
class GenerateWork:
    prompt: str
    n: int
    settings: SamplingSettings
    seed: int

    @classmethod
    def from_request(cls, body: GenerateRequest) -> GenerateWork:
        """A request without a seed gets a random one, returned to the client so it can ask again."""
        seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
        return cls(body.prompt, body.n, SamplingSettings(body.cfg, body.temperature, body.top_k, body.top_p, body.speculative), seed)


@dataclass(frozen=True)
class AskWork:
    """Answers about one image: the native /v1/ask (one greedy answer) and chat completions (any settings)."""

    image: Image.Image  # RGB, any size: the pipeline resizes it to the tokenizer's canvas
    question: str
    n: int = 1
    max_new_tokens: int = DEFAULT_ANSWER_TOKENS
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    on_token: Callable[[int, int, int], None] | None = None  # AnswerRequest.on_token: streaming

    def request(self, device: torch.device) -> AnswerRequest:
        """A fresh generator on every run: a batch that failed is rerun request by request, and the rerun must
        draw what the first run drew (a stream has shown part of it already)."""
        generator = torch.Generator(device=device).manual_seed(self.seed)
        return AnswerRequest(self.question, self.n, self.max_new_tokens, self.temperature, self.top_k, self.top_p,
                             generator, self.on_token)  # fmt: skip


class ModelRunner:
    def __init__(self, pipe: Pipeline):
        self.pipe = pipe
        self.tasks = pipe.model.tasks

    def run_batch(self, kind: str, works: list) -> list:
        """One result per work: a list of PIL images per GenerateWork, a list of `Answer`s per AskWork."""
        if kind == "generate":
            return self.generate(works)
        if kind == "ask":
            return self.pipe.answer([w.image for w in works], [w.request(self.pipe.device) for w in works])
        raise ValueError(f"unknown kind of request: {kind}")

    def generate(self, works: list[GenerateWork]) -> list[list[Image.Image]]:
        device = self.pipe.device
        requests = [CodeRequest([w.prompt] * w.n, w.settings, torch.Generator(device=device).manual_seed(w.seed))
                    for w in works]  # fmt: skip
        codes = sample_codes_per_request(self.pipe.model, self.pipe.builder, requests)
        # Decoded per request, as it would be alone: a convolution's float rounding may depend on the batch it
        # runs in, and a pixel rounding the other way would break "same seed, same image" for no gain.
        return [self.pipe.decode_codes(c) for c in codes]

    # --- checks against the model, run on the API side before a request is queued ------------------------------

    def require(self, task: str) -> None:
        if task not in self.tasks:
            action = {"gen": "generate images", "und": "answer questions"}[task]
            raise UserError(f"this server cannot {action}: the '{task}' branch is not loaded (loaded: "
                            f"{', '.join(self.tasks)}); restart it with --task {task} or --task both")  # fmt: skip

    def check_prompt(self, prompt: str) -> None:
        cfg, builder = self.pipe.model.cfg, self.pipe.builder
        markers = len(builder.generate("").tokens)  # BOS and <img>
        tokens = len(builder.generate(prompt).tokens) - markers
        room = cfg.max_seq_len - (cfg.image_tokens - 1) - markers  # the last code is sampled, never fed
        if tokens > room:
            raise FieldError("prompt", f"is {tokens} tokens; the model's context of {cfg.max_seq_len} leaves room "
                                       f"for {room} beside {cfg.image_tokens} image codes")  # fmt: skip

    def check_question(self, question: str, field: str = "question") -> None:
        cfg = self.pipe.model.cfg
        blank = torch.zeros(cfg.image_tokens, dtype=torch.long)
        latents = torch.zeros(cfg.image_tokens, cfg.image_latent_dim)
        width = len(self.pipe.builder.understand(question, blank, latents).tokens)
        if width >= cfg.max_seq_len:  # the answer needs at least one position
            raise FieldError(field, f"is too long: with the image it takes {width} tokens of the model's context "
                                    f"of {cfg.max_seq_len}; shorten it")  # fmt: skip

    def info(self) -> dict:
        cfg = self.pipe.model.cfg
        return {
            "tasks": list(self.tasks),
            "sharing": cfg.plan,
            "n_layers": cfg.n_layers,
            "image_size": self.pipe.image_tokenizer.cfg.image_size,
            "parameters": self.pipe.model.param_counts(),
            "config": asdict(cfg),
            "device": str(self.pipe.device),
        }
