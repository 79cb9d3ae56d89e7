"""Errors of the model registry, evaluation, compression, search and deployment."""

from __future__ import annotations

from granary.errors import GranaryError


class ModelError(GranaryError):
    """Base of model-registry errors."""


class ModelNotFoundError(ModelError, LookupError):
    """A model name, version or alias does not exist."""


class ShapeMismatchError(ModelError, ValueError):
    """A checkpoint's tensors do not match the declared architecture.

    Attributes:
        checkpoint: the checkpoint ref.
        problems: one line per mismatching, missing or unexpected tensor.
    """

    def __init__(self, checkpoint: str, problems: list[str]) -> None:
        self.checkpoint = checkpoint
        self.problems = problems
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        super().__init__(f"checkpoint {checkpoint} does not match the declared architecture: {shown}",
                         hint="declare the architecture the run trained (--arch FILE, or omit it to use the "
                              "checkpoint's own); nothing was registered")


class PromotionRefusedError(ModelError, PermissionError):
    """Data policy or a regression gate forbids moving an alias to this version."""


class EvalError(ModelError):
    """An evaluation could not run or did not finish."""


class CompressError(ModelError):
    """A compression method cannot apply to this model."""


class DeployError(ModelError):
    """A deployment did not become healthy or could not be changed; the previous version keeps serving."""
