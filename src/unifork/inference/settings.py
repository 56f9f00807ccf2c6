"""The image sampling settings: one home for their defaults and their ranges.

Everything that draws images takes them from here: `unifork generate` and `unifork eval`, Pipeline.generate, the
REST schema and the web demo, ShapeEval, the study, the quickstart report and the bench. How many images and
which seed are not settings: they belong to one call (the server draws a seed per request, an evaluation runs
one generator through all its prompts), while one SamplingSettings serves every call of a run.

A leaf module (no torch), so the CLI can show the defaults in its help without loading the model code.
"""

import math
import operator
from dataclasses import dataclass, field, fields

from unifork.errors import UserError, param

DEFAULT_CFG_SCALE = 2.0  # the middle of the plateau on the exact rule over three checkpoints: docs/results/guidance_sweep.md
DEFAULT_IMAGES = 4  # images per prompt where a caller does not say
DEFAULT_ANSWER_TOKENS = 32
# drafts per pass where speculative decoding is asked for without a window (a bare --speculative, the bench): of 4, 8,
# 16 and 32 on the quickstart checkpoint at batch 1, the fewest passes (0.39 of plain) and the best time (1.7x)
SPECULATIVE_WINDOW = 16
MAX_SPECULATIVE_WINDOW = 64  # drafts hold a distribution each: images x window x code vocabulary floats  # longest answer; the shapes world's answers are a few words

_TESTS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<=")}


def _is_a(value, kind: type) -> bool:
    """An int for int fields, an int or float that is a finite float for float fields; never a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        return False
    try:
        return kind is int or math.isfinite(float(value))
    except OverflowError:  # an int beyond float range
        return False


def _setting(default, text: str, **bounds: float):
    """A field with its default, a help line for the CLI and the API, and its range (ge / gt / le, as pydantic)."""
    return field(default=default, metadata={"help": text, "bounds": bounds})


@dataclass(frozen=True)
class SamplingSettings:
    """How each image code is drawn; a value out of range is a UserError naming the field, at construction."""

    # Classifier-free guidance (Ho & Salimans, arXiv 2207.12598): logits uncond + scale * (cond - uncond)
    cfg_scale: float = _setting(DEFAULT_CFG_SCALE, "classifier-free guidance scale (1 = off)", ge=0)
    temperature: float = _setting(1.0, "sampling temperature (0 = greedy)", ge=0)
    top_k: int = _setting(0, "sample among the k most likely codes (0 = off)", ge=0)
    # Nucleus sampling (Holtzman et al., arXiv 1904.09751)
    top_p: float = _setting(1.0, "nucleus sampling mass (1 = off)", gt=0, le=1)
    # Speculative Jacobi decoding (Teng et al., arXiv 2410.01699): the same distribution in fewer forward passes
    speculative: int = _setting(0, "speculative Jacobi decoding: image codes drafted per forward pass (0 = off)",
                                ge=0, le=MAX_SPECULATIVE_WINDOW)

    def __post_init__(self):
        for f in fields(self):
            value, bounds = getattr(self, f.name), f.metadata["bounds"]
            expected = type(f.default)  # int or float: read off the default, which does not depend on annotations
            kind = "an integer" if expected is int else "a finite number"
            if not (_is_a(value, expected) and all(_TESTS[op][0](value, limit) for op, limit in bounds.items())):
                rule = " and ".join(f"{_TESTS[op][1]} {limit:g}" for op, limit in bounds.items())
                raise UserError(f"{param(f.name)} must be {kind} {rule}, got {value}")
            if expected is float:
                object.__setattr__(self, f.name, float(value))  # frozen; an int scale is stored as the float it means

    @staticmethod
    def bounds(name: str) -> dict[str, float]:
        """One setting's range as pydantic's Field takes it, e.g. {"gt": 0, "le": 1}."""
        return dict(_FIELDS[name].metadata["bounds"])

    @staticmethod
    def help(name: str) -> str:
        return _FIELDS[name].metadata["help"]


_FIELDS = {f.name: f for f in fields(SamplingSettings)}
DEFAULTS = SamplingSettings()
