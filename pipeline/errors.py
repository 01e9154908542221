"""Refusals a run can raise before doing any work; light to import (the CLI maps them to exit 2).

`InputError` is the one type for bad input: raised where input (a spec, a path, the data)
is checked, with a message that names the problem and the fix. Any other exception is a
bug or a failure of the machine, never reported as bad input.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user: the message names the field or file and the fix."""


class RunInProgressError(InputError):
    """Another live run holds the output's lock."""


class PlanMismatchError(InputError):
    """The output store was made for another grid or spec."""


class ResourceUnavailableError(InputError):
    """The job asks for GPUs or CPUs that the embedded Ray cannot provide."""


class StorageError(RuntimeError):
    """Writing the output failed (disk full, permissions): a failure, not bad input."""
