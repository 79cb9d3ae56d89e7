"""What travels between the coordinator and the sites besides model arrays: small, typed config values.

Flower configs hold scalars only (bool, bytes, float, int, str); structured values travel as JSON strings.
Keys of the exchanges the coordinator starts with ``get_properties``: ``granary`` names the step.
"""

from __future__ import annotations

import json
from typing import Any

from granary.train.federated.errors import FederatedError

HELLO = "hello"  # join the round: the site checks the run's purpose and budget, returns its name (and mask keys)
SHARE = "secagg-share"  # a site Shamir-shares its mask key and self-mask seed, encrypted to each peer
REVEAL = "secagg-reveal"  # survivors send shares: self-mask seeds of survivors, mask keys of dropped sites
DECRYPT = "he-decrypt"  # a site decrypts the homomorphic sum (only the sum ever reaches it)
STATS = "he-stats"  # a site sends statistics of its data, CKKS-encrypted
DOC_TOKEN_EDGES = (16, 64, 256, 1024, 4096)  # the agreed bins of the documents-by-length histogram
HIST_KEYS = (*(f"docs_tokens_lt_{e}" for e in DOC_TOKEN_EDGES), f"docs_tokens_ge_{DOC_TOKEN_EDGES[-1]}")
STATS_KEYS = ("documents", "tokens", "samples", *HIST_KEYS)


def length_histogram(lengths: Any) -> dict[str, float]:
    """Documents per token-length bin (:data:`DOC_TOKEN_EDGES`), keyed like :data:`HIST_KEYS`."""
    import numpy as np

    counts = np.bincount(np.searchsorted(np.asarray(DOC_TOKEN_EDGES), np.asarray(lengths), side="right"),
                         minlength=len(HIST_KEYS))
    return {k: float(c) for k, c in zip(HIST_KEYS, counts.tolist(), strict=True)}


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def loads(config: dict[str, Any], key: str) -> Any:
    """A JSON value from a Flower config, or a clear error naming the key."""
    raw = config.get(key)
    if not isinstance(raw, str):
        raise FederatedError(f"the coordinator's message lacks {key!r} (got {type(raw).__name__})",
                             hint="coordinator and site must run the same Granary version")
    try:
        return json.loads(raw)
    except ValueError:
        raise FederatedError(f"the coordinator's {key!r} is not valid JSON") from None
