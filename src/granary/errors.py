"""Granary's exception hierarchy: one base, one base per subsystem, facts carried as fields."""

from __future__ import annotations


class GranaryError(Exception):
    """Base of every error Granary raises on purpose.

    Attributes:
        hint: what the user can do about it (shown by the CLI under the message).
    """

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base}; {self.hint}" if self.hint else base


class ConfigError(GranaryError):
    """A setting is missing or malformed."""


class MissingDependencyError(GranaryError):
    """An optional dependency is needed for this feature."""

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"this feature needs the package {package!r}",
            hint=f"install it with: pip install 'granary[{extra}]'",
        )


class CatalogError(GranaryError):
    """The catalog database is unreachable, outdated or inconsistent."""


class StoreError(GranaryError):
    """Base of dataset-store errors."""


class InvalidNameError(StoreError, ValueError):
    """A dataset, branch or tag name is not allowed."""


class NotFoundError(StoreError, LookupError):
    """A dataset, version, branch or tag does not exist."""


class ExpiredVersionError(NotFoundError):
    """A version was expired by a retention policy or a forget request and can no longer be read.

    Attributes:
        dataset: the dataset.
        version: the version id.
        state: its state (``expired``, ``deleted`` or ``shredded``).
    """

    def __init__(self, dataset: str, version: str, state: str) -> None:
        self.dataset = dataset
        self.version = version
        self.state = state
        super().__init__(
            f"version {version[:12]} of {dataset} has expired ({state})",
            hint=f"it was removed by a retention policy or a forget request; read a live version "
                 f"(`granary log {dataset}`) or restore the data from its source",
        )


class AlreadyExistsError(StoreError):
    """A dataset, branch or tag with this name already exists."""


class AmbiguousRefError(StoreError, LookupError):
    """A version-id prefix matches more than one version."""


class ConflictError(StoreError):
    """A commit's parent is no longer the branch head (someone else committed first).

    Attributes:
        dataset: the dataset name.
        branch: the branch that moved.
        expected: the parent the commit was built on.
        actual: the branch head found at commit time.
    """

    def __init__(self, dataset: str, branch: str, expected: str | None, actual: str | None) -> None:
        self.dataset = dataset
        self.branch = branch
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"commit conflict on {dataset}@{branch}: it was built on {_short(expected)} "
            f"but the branch head is now {_short(actual)}",
            hint="re-read the branch head and commit again (Store.commit(..., retries=N) does this for appends)",
        )


class IntegrityError(StoreError):
    """Stored bytes do not match their recorded checksum, or an object is missing or truncated.

    Attributes:
        key: the object key.
        shard: the shard index in its version, when known.
        expected: the recorded checksum.
        actual: the checksum computed now (None when the object is missing).
    """

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        shard: int | None = None,
        expected: str | None = None,
        actual: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.key = key
        self.shard = shard
        self.expected = expected
        self.actual = actual
        super().__init__(
            message,
            hint=hint or "run `granary verify REF` to list every damaged object; restore it from a replica",
        )


class IngestError(StoreError):
    """A malformed input record; carries the file, line or row and the reason.

    Attributes:
        path: the input file.
        line: 1-based line (JSONL, CSV) or row (Parquet) number, when known.
        reason: what is wrong with the record.
    """

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line is not None else path
        super().__init__(
            f"bad record at {where}: {reason}",
            hint="fix the input, or ingest with --on-error quarantine to keep bad records aside with their reason",
        )


class SyncError(StoreError):
    """Push, pull, sync and backup failures (remotes, transfers, restores)."""


class DivergedError(SyncError):
    """The two sides of a push or pull both have commits the other lacks; nothing was moved."""

    def __init__(self, dataset: str, branch: str, local: str | None, remote: str | None, *, direction: str) -> None:
        self.dataset, self.branch, self.local, self.remote = dataset, branch, local, remote
        if direction == "push":
            hint = (f"pull first (`granary pull {dataset}@{branch} REMOTE`), push to a new branch "
                    f"(`--to-branch NAME`), or overwrite the remote with `--force` (audited)")
        else:
            hint = ("pull into a new branch (`--to-branch NAME`) and reconcile, or replace the local branch "
                    "with `--force` (audited)")
        super().__init__(
            f"{dataset}@{branch} has diverged: local head {_short(local)}, remote head {_short(remote)}; "
            f"neither contains the other", hint=hint)


class CurateError(GranaryError):
    """Base of curation errors."""


class StreamError(GranaryError):
    """Base of tokenization and streaming errors."""


class TrainError(GranaryError):
    """Base of training-run errors."""


class SchedError(GranaryError):
    """Base of scheduler errors."""


class ServeError(GranaryError):
    """Base of gateway errors."""


class MonitorError(GranaryError):
    """Base of monitoring errors."""


class SecurityError(GranaryError):
    """Base of security errors (crypto, tokens, roles, audit, purposes)."""


class AuthorizationError(SecurityError, PermissionError):
    """A principal is not allowed to perform an action."""


def _short(version_id: str | None) -> str:
    return "(none)" if version_id is None else version_id[:12]
