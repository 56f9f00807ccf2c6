"""Figure 2: our KV-cache decoding on the und branch against Hugging Face `generate` on the same network.

The und path (trunk + und branch + text head) is a Qwen2 (or Llama) decoder; `hf_twin` builds that transformers
model in memory with export-hf's config and tensor names, so both sides run the same architecture and weights.
Plain sampling (temperature 1, no top-k/top-p, no guidance) of the same number of new text tokens from the same
prompts: ours is inference.answers.sample_text, the loop `unifork ask` answers with (greedy there), with no
end-of-sequence stop; HF gets use_cache=True and no end-of-sequence token, so it never stops early either.
"""

from __future__ import annotations

import torch

from unifork.bench.profiling import top_ops
from unifork.bench.timing import interleaved, versus
from unifork.bench.workload import text_prompts
from unifork.hf.architectures import hf_config
from unifork.hf.weights import und_path_names
from unifork.inference.answers import sample_text
from unifork.model.unifork import Batch, UniFork
from unifork.sequences import SequenceBuilder


def hf_twin(model: UniFork, builder: SequenceBuilder):
    """A transformers causal LM with our und path's architecture and weights (what export-hf writes, in memory)."""
    import transformers

    transformers.logging.set_verbosity_error()  # no generation-config chatter in the bench output
    config = hf_config(model.cfg, builder.text)
    config_class = transformers.AutoConfig.for_model(config["model_type"]).__class__
    settings = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "torch_dtype")}
    twin = getattr(transformers, config["architectures"][0])(config_class(**settings)).eval()
    state = model.state_dict()
    twin.load_state_dict({hf: state[ours] for ours, hf in und_path_names(model.cfg).items()}, strict=True)
    twin.generation_config.eos_token_id = None  # a fixed number of new tokens on both sides
    return twin


@torch.inference_mode()
def hf_sample_text(twin, batch: Batch, max_new_tokens: int) -> torch.Tensor:
    out = twin.generate(input_ids=batch.tokens, attention_mask=batch.valid.long(), do_sample=True, temperature=1.0,
                        top_k=0, top_p=1.0, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                        use_cache=True, pad_token_id=0)  # fmt: skip
    return out[:, batch.tokens.shape[1] :]


def hf_generate_figure(model: UniFork, builder: SequenceBuilder, batch_sizes: tuple[int, ...], new_tokens: int,
                       repeats: int, warmup: int) -> dict:  # fmt: skip
    """Text tokens/s of both per batch size; the headline is the smallest speedup (HF time / ours) over batches."""
    twin = hf_twin(model, builder)
    details = {"architecture": type(twin).__name__, "new_tokens": new_tokens}
    for b in batch_sizes:
        batch = builder.collate(text_prompts(builder, b))
        details.setdefault("max_logit_diff", _max_logit_diff(model, twin, batch))
        if hf_sample_text(twin, batch, new_tokens).shape[1] != new_tokens:
            raise RuntimeError(f"HF generate stopped before {new_tokens} new tokens; the comparison would be unfair")
        t = interleaved(decoders(model, twin, batch, new_tokens), repeats, warmup)
        details[f"batch_{b}"] = {"prompt_tokens": batch.tokens.shape[1], **versus(t, "ours", "hf", b * new_tokens)}
    largest = builder.collate(text_prompts(builder, max(batch_sizes)))
    details["profile"] = {
        "ours": top_ops(lambda: sample_text(model, largest, new_tokens, temperature=1.0)),
        "hf": top_ops(lambda: hf_sample_text(twin, largest, new_tokens)),
    }
    speedup = min(details[f"batch_{b}"]["speedup"]["median"] for b in batch_sizes)
    return {"speedup": speedup, **details}


def decoders(model: UniFork, twin, batch: Batch, new_tokens: int) -> dict:
    """Both sides decoding `new_tokens` from the same prompts."""

    def ours():
        return sample_text(model, batch, new_tokens, temperature=1.0, generator=torch.Generator().manual_seed(0))

    def hf():
        return hf_sample_text(twin, batch, new_tokens)

    return {"ours": ours, "hf": hf}


@torch.inference_mode()
def _max_logit_diff(model: UniFork, twin, batch: Batch) -> float:
    """Proof that both sides are one network: max |logit difference| over the prompt's valid positions."""
    ours = model.logits("und", batch)
    theirs = twin(input_ids=batch.tokens, attention_mask=batch.valid.long(), position_ids=batch.positions).logits
    return (ours - theirs)[batch.valid].abs().max().item()
