"""Refusals a run can raise before doing any work; light to import (the CLI maps them to exit 2)."""

from __future__ import annotations


class RunInProgressError(RuntimeError):
    """Another live run holds the output's lock."""


class PlanMismatchError(ValueError):
    """The output store was made for another grid or spec."""


class GPUUnavailableError(RuntimeError):
    """The job asks for GPUs that the embedded Ray cannot see."""
