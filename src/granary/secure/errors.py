"""Errors of the security subsystem: crypto, keys, tokens, audit, purposes and privacy budgets."""

from __future__ import annotations

from granary.errors import AuthorizationError, SecurityError
from granary.errors import ExpiredVersionError as ExpiredVersionError  # raised by the store; kept importable here


class CryptoError(SecurityError):
    """Ciphertext failed authentication or is malformed (tampered, truncated, swapped or wrong key).

    Attributes:
        where: what was being decrypted (object key, shard id).
        chunk: the chunk index that failed, when known.
    """

    def __init__(self, message: str, *, where: str | None = None, chunk: int | None = None,
                 hint: str | None = None) -> None:
        self.where = where
        self.chunk = chunk
        super().__init__(
            message,
            hint=hint or "the object was altered or belongs elsewhere; restore it from a replica "
            "and run `granary audit log --action decrypt-failed` to see who hit it",
        )


class KeyMissingError(SecurityError, LookupError):
    """A master key or data key is missing, retired or destroyed."""


class ShreddedKeyError(KeyMissingError):
    """The data key of an object was destroyed on purpose (crypto-shredding): the data is gone for good.

    Attributes:
        key_ref: the data key's reference (the encrypted object's id).
    """

    def __init__(self, key_ref: str, shredded_at: float) -> None:
        self.key_ref = key_ref
        self.shredded_at = shredded_at
        super().__init__(
            f"the data key {key_ref} was destroyed (crypto-shredded) at {shredded_at:.0f}; "
            "its data can no longer be decrypted",
            hint="read a newer version of the dataset (`granary log DATASET`)",
        )


class AuthenticationError(SecurityError):
    """A token is missing, malformed, unknown, expired or revoked."""


class AuditError(SecurityError):
    """The audit chain is broken: a record was edited, deleted, inserted or reordered.

    Attributes:
        position: the sequence number of the first bad record.
        reason: what is wrong there.
    """

    def __init__(self, position: int, reason: str) -> None:
        self.position = position
        self.reason = reason
        super().__init__(
            f"audit chain broken at record {position}: {reason}",
            hint="treat the catalog as compromised; compare with the last exported signed checkpoint",
        )


class PurposeError(AuthorizationError):
    """A read was declared for a purpose (or none) that the dataset's policy does not allow."""


class BudgetExhaustedError(SecurityError):
    """A differentially private release would exceed the dataset's privacy budget.

    Attributes:
        dataset: the dataset.
        requested: the epsilon asked for.
        remaining: the epsilon left.
    """

    def __init__(self, dataset: str, requested: float, remaining: float, *, what: str = "epsilon") -> None:
        self.dataset = dataset
        self.requested = requested
        self.remaining = remaining
        self.what = what
        super().__init__(
            f"privacy budget of {dataset} exhausted: this release needs {what}={requested:g} "
            f"but only {remaining:g} is left",
            hint="release fewer statistics, or an admin raises the budget with `granary policy budget`",
        )


class SecAggError(SecurityError):
    """A secure-aggregation message is malformed or the masked sum cannot be completed (too few survivors)."""


class HomomorphicError(SecurityError):
    """A CKKS context or ciphertext is malformed, or an operation was asked of a context without the key."""
