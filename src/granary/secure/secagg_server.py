"""The aggregator's side of secure aggregation: routes encrypted shares, sums masked inputs, unmasks only the sum.

See :mod:`granary.secure.secagg` for the protocol. The aggregator never holds a key that decrypts a share, never
sees an input without the masks of its peers, and reconstructs a client's *s* key only when that client dropped
(sent no masked input), so its pairwise masks can be taken out of the survivors' sum.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from granary.secure import shamir
from granary.secure.errors import SecAggError
from granary.secure.secagg import (
    FRAC_BITS,
    MASK_INFO,
    agree,
    check_keys,
    check_threshold,
    decode,
    default_threshold,
    expand,
    holders,
    pair_mask,
)

Answers = Mapping[str, Mapping[str, tuple[str, bytes]]]  # survivor -> {client: ("b" | "s", share)}


class SecAggServer:
    """One round at the aggregator.

    Args:
        keys: U1, every client's advertised keys (name -> 96 bytes).
        length: the vector length.
        round_id: the round's id (the same the clients use).
        threshold: shares needed to recover a secret (default: more than half of U1).
    """

    def __init__(self, keys: Mapping[str, bytes], length: int, *, round_id: str, threshold: int | None = None) -> None:
        self.keys = check_keys(keys)
        self.threshold = threshold if threshold is not None else default_threshold(len(self.keys))
        check_threshold(self.threshold, len(self.keys))
        self.length = length
        self.round_id = round_id
        self.share_bytes = 0
        self._routed: dict[str, dict[str, bytes]] = {}  # recipient -> sender -> ciphertext
        self._shared: set[str] = set()
        self._total = np.zeros(length, dtype=np.uint64)
        self._received: set[str] = set()

    # -- step 2: route the shares ---------------------------------------------------------------------
    def add_shares(self, sender: str, shares: Mapping[str, bytes]) -> None:
        """Accept ``sender``'s encrypted shares (one for every other client of U1)."""
        if sender not in self.keys or sender in self._shared:
            raise SecAggError(f"{sender} sent shares but is not a participant of this round, or sent them twice")
        if set(shares) != set(self.keys) - {sender}:
            raise SecAggError(f"{sender} must send one share to each of {sorted(set(self.keys) - {sender})}, "
                              f"sent to {sorted(shares)}")
        for recipient, blob in shares.items():
            self._routed.setdefault(recipient, {})[sender] = bytes(blob)
            self.share_bytes += len(blob)
        self._shared.add(sender)

    @property
    def shared(self) -> list[str]:
        """U2: the clients whose shares arrived (only they may send masked inputs)."""
        return sorted(self._shared)

    def shares_for(self, recipient: str) -> dict[str, bytes]:
        """The ciphertexts addressed to ``recipient`` by the other clients of U2."""
        if len(self._shared) < self.threshold:
            raise SecAggError(f"only {len(self._shared)} of {len(self.keys)} clients shared their keys; the "
                              f"threshold is {self.threshold}", hint="the round fails; start more sites")
        if recipient not in self._shared:
            raise SecAggError(f"{recipient} did not share its keys and may not mask in this round")
        return {s: c for s, c in self._routed.get(recipient, {}).items() if s in self._shared}

    # -- step 3: masked inputs ------------------------------------------------------------------------
    def add(self, name: str, masked: np.ndarray) -> None:
        """Add one client's masked vector (checked for sender, shape and dtype)."""
        if name not in self._shared:
            raise SecAggError(f"{name} sent a masked vector but did not share its keys in this round")
        if name in self._received:
            raise SecAggError(f"{name} sent two masked vectors in one round")
        arr = np.asarray(masked)
        if arr.dtype != np.uint64 or arr.shape != (self.length,):
            raise SecAggError(f"masked vector of {name} is {arr.dtype}{list(arr.shape)}; expected "
                              f"uint64[{self.length}]")
        with np.errstate(over="ignore"):
            self._total = self._total + arr
        self._received.add(name)

    @property
    def survivors(self) -> list[str]:
        """U3: the clients whose masked input arrived."""
        return sorted(self._received)

    @property
    def dropped(self) -> list[str]:
        """U2 \\ U3: shared their keys, then sent no masked input."""
        return sorted(self._shared - self._received)

    # -- step 4: unmask the sum -----------------------------------------------------------------------
    def unmask(self, answers: Answers, *, frac_bits: int = FRAC_BITS) -> np.ndarray:
        """The decoded sum of the survivors' inputs from the survivors' answers (:meth:`SecAggClient.unmask`)."""
        t = self.threshold
        if len(self._received) < t:
            raise SecAggError(f"only {len(self._received)} of {len(self.keys)} clients sent masked vectors; the "
                              f"threshold is {t}, so the masks cannot be removed", hint="the round fails; run it again")
        answers = {a: v for a, v in answers.items() if a in self._received}
        if len(answers) < t:
            raise SecAggError(f"only {len(answers)} of {len(self._received)} survivors answered the unmasking "
                              f"step; {t} shares of each secret are needed, so the sum cannot be unmasked",
                              hint="the round fails; run it again with more sites or a lower threshold")
        total = self._total.copy()
        with np.errstate(over="ignore"):
            for u in self.survivors:
                b = self._recover(u, "b", answers)
                if hashlib.sha256(b).digest() != self.keys[u][64:]:
                    raise SecAggError(f"the shares of {u}'s self-mask seed do not match its commitment "
                                      "(a survivor sent a wrong share)")
                total = total - expand(b, self.length)
            for d in self.dropped:
                total = total - self._dropped_masks(d, self._recover(d, "s", answers))
        return decode(total, frac_bits=frac_bits)

    def _recover(self, client: str, kind: str, answers: Answers) -> bytes:
        index = holders(self.keys)
        got = {index[a]: ans[client][1] for a, ans in answers.items()
               if client in ans and ans[client][0] == kind}
        if len(got) < self.threshold:
            raise SecAggError(f"{len(got)} shares of {client}'s {'self-mask seed' if kind == 'b' else 'mask key'} "
                              f"arrived; {self.threshold} are needed", hint="the round fails; run it again")
        return shamir.combine(got, threshold=self.threshold)

    def _dropped_masks(self, dropped: str, s_key: bytes) -> np.ndarray:
        """The sum of the pairwise masks the survivors added for ``dropped`` (from its recovered s key)."""
        private = X25519PrivateKey.from_private_bytes(s_key)
        if private.public_key().public_bytes_raw() != self.keys[dropped][32:64]:
            raise SecAggError(f"the shares of {dropped}'s mask key do not match its public key "
                              "(a survivor sent a wrong share)")
        out = np.zeros(self.length, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for v in self.survivors:
                seed = agree(private, self.keys[v][32:64], info=MASK_INFO, round_id=self.round_id, a=dropped, b=v)
                out = out + pair_mask(seed, v, dropped, self.length)
        return out
