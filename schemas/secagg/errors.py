"""The one exception of secure aggregation, with a machine-readable ``problem``."""

from __future__ import annotations

from enum import StrEnum

from ..errors import FedmqError, Reason


class Problem(StrEnum):
    """What went wrong in a secure-aggregation primitive. Values are stable."""

    BAD_PARAMETER = "bad_parameter"  # a width, threshold, degree, length or key out of range
    BAD_SHARE = "bad_share"  # a share is malformed, duplicated or does not belong here
    BELOW_THRESHOLD = "below_threshold"  # too few survivors or shares: no partial result
    MISSING_SECRET = "missing_secret"  # a seed or key needed to unmask was not supplied
    SHARE_CONFLICT = "share_conflict"  # both share kinds of one member were asked for
    NOT_SEALED_FOR_US = "not_sealed_for_us"  # a sealed share does not open with our key
    NORM_BOUND = "norm_bound"  # an unmasked sum larger than clipped inputs can make


_REASONS = {
    Problem.BAD_PARAMETER: Reason.INVALID_FIELD,
    Problem.BAD_SHARE: Reason.INVALID_FIELD,
    Problem.BELOW_THRESHOLD: Reason.NOT_AUTHORIZED,
    Problem.MISSING_SECRET: Reason.INVALID_FIELD,
    Problem.SHARE_CONFLICT: Reason.NOT_AUTHORIZED,
    Problem.NOT_SEALED_FOR_US: Reason.WRONG_RECIPIENT,
    Problem.NORM_BOUND: Reason.NORM_EXCEEDED,
}


class SecAggError(FedmqError):
    """A secure-aggregation primitive refused. ``problem`` says why; ``reason`` is the nearest
    :class:`~schemas.errors.Reason`, so acks and metrics keep one vocabulary."""

    def __init__(self, problem: Problem, detail: str = "", *, sender: str | None = None) -> None:
        self.problem = Problem(problem)
        super().__init__(_REASONS[self.problem], f"{self.problem.value}: {detail}",
                         sender=sender)
