"""The Y-shaped UniFork model: shared layers, then one branch per task (UniFork, arXiv 2506.17202, Fig. 1).

    text / image codes / image latents
                 |
      trunk: embeddings + the shared layers          (both tasks)
              /                          \\
    und branch: its per-task layers      gen branch: its per-task layers
    + norm + text head                   + norm + image-code head (+ the depth head over residual codes)

The sharing plan (model/sharing.py) says which layers are shared: the Y shares layers [0, fork_layer); `shared`
is one stack with two heads, `separate` two task-specific models that share only the embeddings, and x, inverted
y or any explicit plan interleave the two kinds. Every sample passes through n_layers layers, so the plan costs
parameters, not compute per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unifork.errors import UserError
from unifork.model.blocks import Block, LayerCache, RMSNorm, Rotary
from unifork.model.config import ModelConfig
from unifork.model.depth_head import DepthHead, level_logits, next_level_logits
from unifork.model.sharing import PER_TASK, SHARED, layer_modules
from unifork.model.vision import VisionEncoder
from unifork.tokenizers.residual import unpack_levels

# What fills a sequence position: a text token, an image code, or a slot for one projected image latent.
TEXT, CODE, LATENT = 0, 1, 2
TASKS = ("und", "gen")
TASK_ID = {"und": 0, "gen": 1}
IGNORE = -100


@dataclass
class Batch:
    """A left-padded batch of sequences of either task. T = longest sequence, L = image tokens."""

    tokens: torch.Tensor  # (B, T) long: text ids at TEXT positions, code ids at CODE positions, 0 elsewhere
    kinds: torch.Tensor  # (B, T) long: TEXT / CODE / LATENT
    valid: torch.Tensor  # (B, T) bool: False at padding
    task: torch.Tensor  # (B,) long: TASK_ID
    # The N rows holding LATENT slots, in row order: tokenizer latents (N, L, latent_dim), or for und_input "vision"
    # the pixels (N, 3, H, W) in [-1, 1] that the trunk's vision encoder turns into them.
    latents: torch.Tensor | None = None
    targets: torch.Tensor | None = None  # (B, T) long: the next token where a loss applies, IGNORE elsewhere
    image_index: torch.Tensor | None = None  # (B, T) long: grid cell of each image position; None: count from 0

    def grid_cells(self) -> torch.Tensor:
        """Which cell of the image grid each CODE/LATENT position holds (row-major); 0 elsewhere.

        A decode step holding one code cannot count from its own columns, so the sampler passes image_index.
        """
        if self.image_index is not None:
            return self.image_index
        is_image = (self.kinds == CODE) | (self.kinds == LATENT)
        return (is_image.long().cumsum(-1) - 1).clamp_min(0)

    @property
    def positions(self) -> torch.Tensor:
        """RoPE positions that skip left padding, so a padded row computes exactly what it would alone."""
        return (self.valid.long().cumsum(-1) - 1).clamp_min(0)

    def to(self, device) -> "Batch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        names = ("tokens", "kinds", "valid", "task", "latents", "targets", "image_index")
        return Batch(*(move(getattr(self, f)) for f in names))


def attention_mask(valid: torch.Tensor, q_len: int) -> torch.Tensor:
    """(B, 1, q_len, S) bool for the last q_len of S positions: causal, no padding keys.

    Each query may always see itself, so rows of left padding attend to something (no NaN from softmax).
    """
    s = valid.shape[1]
    if q_len == 1 and s > 1:  # a decode step: every key is in its past, and the new position is a real token
        return valid[:, None, None, :]
    q_index = torch.arange(s - q_len, s, device=valid.device)[:, None]
    k_index = torch.arange(s, device=valid.device)[None, :]
    mask = (k_index <= q_index) & valid[:, None, :]
    return (mask | (k_index == q_index)).unsqueeze(1)


def task_columns(batch: Batch, rows: torch.Tensor) -> slice:
    """The columns that hold every token of these rows: the last W, W their longest row (batches are left-padded)."""
    width = int(batch.valid[rows].sum(-1).max())
    return slice(batch.tokens.shape[1] - width, batch.tokens.shape[1])


class Trunk(nn.Module):
    """Embeddings of every input kind plus the shared layers, in layer order."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.text_embed = nn.Embedding(cfg.text_vocab_size, cfg.d_model)
        # one table per residual level; a position's input is the sum of its levels' embeddings (VILA-U)
        self.image_embed = nn.Embedding(cfg.residual_depth * cfg.image_vocab_size, cfg.d_model)
        self.residual_depth, self.num_codes = cfg.residual_depth, cfg.image_vocab_size
        # 2-layer MLP projector with GELU, as LLaVA-1.5 and UniFork use for the understanding input.
        self.projector = nn.Sequential(
            nn.Linear(cfg.image_latent_dim, cfg.d_model), nn.GELU(), nn.Linear(cfg.d_model, cfg.d_model)
        )
        self.vision = VisionEncoder(cfg.vision) if cfg.und_input == "vision" else None
        # Learned embedding of each image position's grid cell: 1-D RoPE alone leaves the 2-D layout for the model
        # to infer (above = 8 positions back), and measured VQA on relations stayed at chance without it.
        self.image_pos = nn.Embedding(max(cfg.image_tokens, cfg.und_image_tokens), cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.plan.count(SHARED)))

    def embed(self, batch: Batch) -> torch.Tensor:
        """(B, T, C) input vectors; each kind scattered into its positions by mask, no loop over samples."""
        b, t = batch.tokens.shape
        x = self.text_embed.weight.new_zeros(b, t, self.text_embed.embedding_dim)
        text, code, latent = (batch.kinds == k for k in (TEXT, CODE, LATENT))
        x[text] = self.text_embed(batch.tokens[text])
        x[code] = self.embed_codes(batch.tokens[code])
        if batch.latents is not None and batch.latents.numel():
            features = batch.latents if self.vision is None else self.vision(batch.latents)
            x[latent] = self.projector(features).flatten(0, 1)
        cells = batch.grid_cells().clamp_max(self.image_pos.num_embeddings - 1)
        return x + self.image_pos(cells) * (code | latent).unsqueeze(-1)

    def embed_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Input vectors of packed image ids (tokenizers/residual.py): the sum of their levels' embeddings."""
        if self.residual_depth == 1:
            return self.image_embed(ids)
        levels = unpack_levels(ids, self.num_codes, self.residual_depth)
        offsets = torch.arange(self.residual_depth, device=ids.device) * self.num_codes
        return self.image_embed(levels + offsets).sum(-2)


class Branch(nn.Module):
    """One task's own layers (the plan's per-task layers, in layer order) + final norm + output head; the gen branch
    at residual depth D > 1 has a depth head, and its head holds one output matrix per level (D * codes rows)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, depth: int = 1):
        super().__init__()
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.plan.count(PER_TASK)))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, depth * vocab_size, bias=False)
        self.depth = DepthHead(cfg) if depth > 1 else None

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        """The branch's output at hidden states h (..., C): logits, or at depth > 1 the normed context (..., C) that
        the depth head reads level by level (code_logits)."""
        context = self.norm(h)
        return context if self.depth is not None else self.head(context)


class UniFork(nn.Module):
    def __init__(self, cfg: ModelConfig, tasks: tuple[str, ...] = TASKS):
        super().__init__()
        self.cfg = cfg
        self.tasks = tuple(t for t in TASKS if t in tasks)
        self.rotary = Rotary(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.trunk = Trunk(cfg)
        # A branch that is not loaded is None (task-only loading saves its memory).
        self.und = Branch(cfg, cfg.text_vocab_size) if "und" in tasks else None
        self.gen = Branch(cfg, cfg.image_vocab_size, cfg.residual_depth) if "gen" in tasks else None
        if cfg.tie_word_embeddings and self.und is not None:
            # One matrix reads and writes text, as in Qwen2.5-0.5B; checkpoint.py stores it once.
            self.und.head.weight = self.trunk.text_embed.weight
        # Each loaded task's blocks in layer order, resolved once: every decode step runs them (by name: 40 us a step).
        self._paths = {task: tuple(self.get_submodule(name) for name in layer_modules(cfg.plan, task)) for task in self.tasks}
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # scale residual projections by depth (GPT-2)
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, std=0.02 / (2 * cfg.n_layers) ** 0.5)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def branch(self, task: str) -> Branch:
        branch = getattr(self, task, None) if task in TASKS else None
        if branch is None:
            raise UserError(f"the '{task}' branch is not loaded (loaded: {', '.join(self.tasks)}); load the checkpoint with task=None or task='{task}'")
        return branch

    def rope_positions(self, batch: Batch) -> torch.Tensor:
        """RoPE positions (B, T); with rope_2d (3, B, T): (sequence, row, column), as Qwen2-VL's multimodal RoPE.

        A text token has its sequence index on all three axes. The positions of an image (a side x side grid)
        start at s, its first token's index: the token at row r, column c is (s, s + r, s + c), and the text after
        it continues at s + side, so relative positions inside an image are its 2-D offsets.
        """
        if not self.cfg.rope_2d:
            return batch.positions
        is_image = (batch.kinds == CODE) | (batch.kinds == LATENT)
        side = torch.where(batch.kinds == LATENT, math.isqrt(self.cfg.und_image_tokens), math.isqrt(self.cfg.image_tokens))
        cells = batch.grid_cells()
        ends_image = is_image & (cells == side * side - 1)
        advance = torch.where(is_image, torch.where(ends_image, side, 0), 1) * batch.valid  # (B, T)
        t = advance.cumsum(-1) - advance  # exclusive: where each token starts
        row = torch.where(is_image, t + cells // side, t)
        col = torch.where(is_image, t + cells % side, t)
        return torch.stack([t, row, col])

    def decode_positions(self, next_position: torch.Tensor, next_cell: torch.Tensor, kind: int) -> torch.Tensor:
        """Positions of new tokens, (B, T): `next_position` holds their text indices, or with rope_2d the start of
        the image the CODE tokens fill (their cells `next_cell` give row and column)."""
        if not self.cfg.rope_2d:
            return next_position
        if kind != CODE:
            return next_position.expand(3, *next_position.shape)
        side = math.isqrt(self.cfg.image_tokens)
        return torch.stack([next_position, next_position + next_cell // side, next_position + next_cell % side])

    def _run(self, layers, x, positions, mask, caches):
        rope = self.rotary.tables(positions)
        for i, layer in enumerate(layers):
            x = layer(x, rope, mask, None if caches is None else caches[i])
        return x

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Mixed-task training forward: each task's rows run that task's path, cut to their own longest row.

        A shared layer is one block on both paths, so it gets the gradients of both tasks' losses; but no row
        attends to another, so each task's rows can run apart, at their own width (task_columns). A batch that ran
        every layer on all rows padded the generation rows to the longer understanding rows: 23% of a step at size
        base, all of it padding (docs/performance.md). Returns the mean next-token cross-entropy of each task
        present, and their sum as "loss".
        """
        positions = self.rope_positions(batch)
        x = self.trunk.embed(batch)
        losses = {}
        for task in self.tasks:
            rows = (batch.task == TASK_ID[task]).nonzero().squeeze(1)
            if not len(rows):
                continue
            cols = task_columns(batch, rows)
            valid, targets = batch.valid[rows, cols], batch.targets[rows, cols]
            mask = attention_mask(valid, valid.shape[1])
            h = self._run(self.path_layers(task), x[rows, cols], positions[..., rows, cols], mask, None)
            branch = self.branch(task)
            supervised = targets != IGNORE
            if branch.depth is None:
                logits = branch.head(branch.norm(h[supervised]))  # only where a loss applies: (N, V)
                losses[task] = F.cross_entropy(logits.float(), targets[supervised])
            else:  # every level of every code, teacher-forced on the levels before it
                levels = unpack_levels(targets[supervised], self.cfg.image_vocab_size, self.cfg.residual_depth)
                outputs = branch.depth(branch.norm(h[supervised]), levels[:, :-1])
                logits = level_logits(branch.head, outputs, self.cfg.image_vocab_size)  # (N, D, K)
                losses[task] = F.cross_entropy(logits.flatten(0, 1).float(), levels.flatten())
        losses["loss"] = sum(losses.values())
        return losses

    def new_cache(self, batch_size: int, max_len: int | None = None) -> list[LayerCache]:
        """One LayerCache per layer on a path (trunk layers, then one branch's layers)."""
        p = next(self.parameters())
        n = self.cfg.n_layers
        max_len = max_len or self.cfg.max_seq_len
        return [LayerCache(batch_size, self.cfg.n_kv_heads, max_len, self.cfg.head_dim, p.dtype, p.device) for _ in range(n)]

    def step(self, task: str, batch: Batch, valid_so_far: torch.Tensor, positions: torch.Tensor,
             cache: list[LayerCache]) -> torch.Tensor:  # fmt: skip
        """Run new positions through the trunk and `task`'s branch with a KV cache (prefill or decode).

        batch holds only the new positions (B, T_new); valid_so_far (B, S) covers cached + new positions.
        Returns the branch's readout at the new positions: logits (B, T_new, V), or for gen at residual depth > 1
        the context (B, T_new, C) that code_logits reads.
        """
        branch = self.branch(task)
        mask = attention_mask(valid_so_far, batch.tokens.shape[1])
        h = self._run(self.path_layers(task), self.trunk.embed(batch), positions, mask, cache)
        return branch.readout(h)

    def logits(self, task: str, batch: Batch) -> torch.Tensor:
        """Full-recompute readout of `task`'s branch at every position, as `step` gives it: the reference for the cache."""
        positions, mask = self.rope_positions(batch), attention_mask(batch.valid, batch.tokens.shape[1])
        h = self._run(self.path_layers(task), self.trunk.embed(batch), positions, mask, None)
        return self.branch(task).readout(h)

    def code_logits(self, context: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """At residual depth > 1: logits (N, K) of the next level's code from a position's context (N, C) and the
        codes chosen at its earlier levels (N, d)."""
        gen = self.branch("gen")
        return next_level_logits(gen.head, gen.depth, context, levels)

    def path_layers(self, task: str) -> tuple[Block, ...]:
        """The blocks `task`'s path runs through, in layer order; a block on both tasks' paths is shared."""
        self.branch(task)  # a clear error when that branch is not loaded
        return self._paths[task]

    def hidden_states(self, task: str, batch: Batch) -> list[torch.Tensor]:
        """The residual stream on `task`'s path: after the embeddings, then after each trunk and branch layer.

        n_layers + 1 tensors of (B, T, C); entry i + 1 comes from layer i (shared where the plan says s). For analysis
        (per-layer alignment), so it runs without a cache; the last entry through norm + head gives logits().
        """
        positions, mask = self.rope_positions(batch), attention_mask(batch.valid, batch.tokens.shape[1])
        x = self.trunk.embed(batch)
        states, rope = [x], self.rotary.tables(positions)
        for layer in self.path_layers(task):
            x = layer(x, rope, mask)
            states.append(x)
        return states

    def param_counts(self) -> dict[str, int]:
        """Parameters of the trunk and each branch; a tied text head counts once, in the trunk."""
        seen: set[int] = set()

        def count(module: nn.Module) -> int:
            new = [p for p in module.parameters() if id(p) not in seen]
            seen.update(id(p) for p in new)
            return sum(p.numel() for p in new)

        counts = {"trunk": count(self.trunk)}
        for task in self.tasks:
            counts[task] = count(self.branch(task))
        counts["total"] = sum(counts.values())
        return counts
