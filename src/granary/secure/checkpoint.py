"""Signed (Ed25519) checkpoints of the audit chain, exported write-once to a separate place.

A checkpoint pins (seq, hash) of the chain head at a moment: ``seq`` is also the number of records (sequence
numbers start at 1 with no gaps), so a log cut back below a checkpoint is detected, and ``hash`` is the head
hash. Signatures are checked against a trusted key configured outside the catalog (:func:`trusted_public_key`),
never only against the key a checkpoint carries. Kept outside the catalog (a WORM bucket, another
host, a printed page), it proves that the records up to ``seq`` were not rewritten or truncated since.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from granary.secure import tables as t
from granary.secure.audit import AuditLog
from granary.secure.errors import AuditError, CryptoError, KeyMissingError
from granary.secure.keys import KeyProvider
from granary.secure.settings import SecureSettings


@dataclass(kw_only=True, frozen=True)
class Checkpoint:
    """A signed statement "record ``seq`` of the audit chain has hash ``hash``".

    Attributes:
        seq: the sequence number pinned.
        hash: that record's chain hash.
        at: when the checkpoint was made (epoch seconds).
        public_key: hex Ed25519 public key of the signer.
        signature: hex Ed25519 signature over :func:`message`.
    """

    seq: int
    hash: str
    at: float
    public_key: str
    signature: str


def message(seq: int, chain_hash: str, at: float) -> bytes:
    """The bytes a checkpoint signature covers."""
    return f"granary-audit-checkpoint\0{seq}\0{chain_hash}\0{at!r}".encode()


def public_hex(key: Ed25519PrivateKey) -> str:
    """Hex of the raw public key."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def sign_bytes(key: Ed25519PrivateKey, data: bytes) -> tuple[str, str]:
    """(public key hex, signature hex) of ``data``."""
    return public_hex(key), key.sign(data).hex()


def verify_bytes(public_key: str, signature: str, data: bytes, *, what: str) -> None:
    """Check an Ed25519 signature; raise CryptoError naming ``what`` when it is bad."""
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key)).verify(bytes.fromhex(signature), data)
    except (InvalidSignature, ValueError):
        raise CryptoError(f"{what}: bad signature", where=what,
                          hint="the signed record was altered, or signed by another key") from None


def check_signature(cp: Checkpoint, trusted_key: str | None = None) -> None:
    """Raise if the checkpoint's signature is bad or (when given) its key is not the trusted one."""
    if trusted_key is not None and cp.public_key != trusted_key:
        raise CryptoError(f"checkpoint {cp.seq} is signed by {cp.public_key[:16]}..., "
                          f"not the trusted key {trusted_key[:16]}...", where=f"checkpoint {cp.seq}")
    verify_bytes(cp.public_key, cp.signature, message(cp.seq, cp.hash, cp.at), what=f"checkpoint {cp.seq}")


def make_checkpoint(audit: AuditLog, key: Ed25519PrivateKey, *, checkpoints: list[Checkpoint] | None = None,
                    trusted_key: str | None = None) -> Checkpoint:
    """Verify the chain (against ``checkpoints`` signed by ``trusted_key``, so a truncated log is never signed
    anew), then sign its head and record the checkpoint in the catalog."""
    report = audit.verify(checkpoints=checkpoints or (), trusted_key=trusted_key)
    if not report.ok:
        raise AuditError(report.first_bad or 0, report.reason or "unknown")
    seq, head = audit.head()
    at = time.time()
    pub, sig = sign_bytes(key, message(seq, head, at))
    cp = Checkpoint(seq=seq, hash=head, at=at, public_key=pub, signature=sig)
    with audit.catalog.write() as conn:
        conn.execute(t.checkpoints.delete().where(t.checkpoints.c.seq == seq))
        conn.execute(t.checkpoints.insert().values(**asdict(cp)))
    return cp


def export_checkpoint(cp: Checkpoint, directory: Path) -> Path:
    """Write ``cp`` to ``directory/checkpoint-<seq>.json`` once (never overwritten; file made read-only)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"checkpoint-{cp.seq:012d}.json"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    except FileExistsError:
        existing = load_checkpoint(path)
        if existing.hash != cp.hash:
            raise AuditError(cp.seq, f"the exported checkpoint {path} pins another hash "
                             f"({existing.hash[:12]}... vs {cp.hash[:12]}...)") from None
        return path
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(cp), fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def load_checkpoint(path: Path) -> Checkpoint:
    """Read one exported checkpoint file."""
    try:
        data = json.loads(Path(path).read_text())
        return Checkpoint(seq=int(data["seq"]), hash=str(data["hash"]), at=float(data["at"]),
                          public_key=str(data["public_key"]), signature=str(data["signature"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CryptoError(f"{path}: not a readable checkpoint ({exc})", where=str(path)) from None


def load_checkpoints(directory: Path) -> Iterator[Checkpoint]:
    """Every checkpoint exported into ``directory``, in sequence order."""
    for path in sorted(Path(directory).glob("checkpoint-*.json")):
        yield load_checkpoint(path)


def trusted_public_key(settings: SecureSettings, provider: KeyProvider | None = None) -> str | None:
    """The public key checkpoints must be signed by: configured outside the catalog
    (``GRANARY_AUDIT_PUBLIC_KEY[_FILE]``), else the public half of the key provider's signing key (held in the
    keyring or KMS, not in the catalog); None when neither is available."""
    if settings.audit_public_key:
        return settings.audit_public_key
    if provider is None:
        return None
    try:
        return public_hex(provider.signing_key())
    except KeyMissingError:
        return None


def all_checkpoints(audit: AuditLog, directory: Path | None = None) -> list[Checkpoint]:
    """The checkpoints stored in the catalog plus those exported into ``directory``, in sequence order."""
    found = stored_checkpoints(audit)
    if directory is not None and Path(directory).is_dir():
        found.extend(load_checkpoints(directory))
    return sorted(found, key=lambda cp: cp.seq)


def stored_checkpoints(audit: AuditLog) -> list[Checkpoint]:
    """Checkpoints recorded in the catalog (an attacker with catalog access can drop these; export them)."""
    with audit.catalog.read() as conn:
        rows = conn.execute(sa.select(t.checkpoints).order_by(t.checkpoints.c.seq)).all()
    return [Checkpoint(**row._asdict()) for row in rows]
