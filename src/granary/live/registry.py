"""Opening a message source from a URL, and parsing ``--every`` durations and ``--schema`` column lists."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import parse_qs, urlparse, urlunparse

import pyarrow as pa

from granary.live.errors import SourceError
from granary.live.source import MessageSource

TYPES: dict[str, pa.DataType] = {
    "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(), "float32": pa.float32(),
    "float64": pa.float64(), "double": pa.float64(), "float": pa.float64(), "bool": pa.bool_(),
    "string": pa.string(), "str": pa.string(), "binary": pa.binary(), "timestamp": pa.timestamp("ms"),
    "timestamp[s]": pa.timestamp("s"), "timestamp[ms]": pa.timestamp("ms"), "timestamp[us]": pa.timestamp("us"),
    "date": pa.date32(),
}
SCHEMES = ("redis", "nats", "amqp", "kafka")


def _redis(url: str, q: dict[str, str]) -> MessageSource:
    from granary.live.redis import RedisStreamSource

    return RedisStreamSource(url, _need(q, "stream", url), group=q.get("group", "granary"),
                             consumer=q.get("consumer", "granary-ingest"), field=q.get("field", "data"),
                             ack=q.get("ack", "xack"))


def _nats(url: str, q: dict[str, str]) -> MessageSource:
    from granary.live.nats import NatsJetStreamSource

    return NatsJetStreamSource(url, _need(q, "stream", url), subject=q.get("subject"),
                               durable=q.get("durable", "granary"))


def _amqp(url: str, q: dict[str, str]) -> MessageSource:
    from granary.live.rabbitmq import RabbitStreamSource

    return RabbitStreamSource(url, _need(q, "queue", url))


def _kafka(url: str, q: dict[str, str]) -> MessageSource:
    from granary.live.kafka import KafkaSource

    return KafkaSource(url, _need(q, "topic", url), group=q.get("group", "granary"))


OPENERS: dict[str, Callable[[str, dict[str, str]], MessageSource]] = {
    "redis": _redis, "nats": _nats, "amqp": _amqp, "kafka": _kafka}


def _need(q: dict[str, str], key: str, url: str) -> str:
    if not q.get(key):
        raise SourceError(f"source {url} names no {key}",
                          hint=f"add ?{key}=NAME to the URL (see docs/ingest-stream.md)")
    return q[key]


def open_source(url: str) -> MessageSource:
    """A source from ``redis://host:port/db?stream=S``, ``nats://host:port?stream=S``,
    ``amqp://user:pass@host:port/vhost?queue=Q`` or ``kafka://host:port?topic=T``."""
    parsed = urlparse(url)
    if parsed.scheme not in OPENERS:
        raise SourceError(f"unknown source scheme {parsed.scheme!r} in {url}", hint=f"use one of {SCHEMES}")
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    base = urlunparse(parsed._replace(query=""))
    return OPENERS[parsed.scheme](base, query)


def parse_duration(text: str) -> float:
    """Seconds from ``30s``, ``500ms``, ``2m``, ``1h`` or a plain number of seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*", text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 500ms, 30s, 2m)")
    value = float(m.group(1))
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[m.group(2)]


def parse_schema(text: str) -> pa.Schema:
    """A schema from ``name:type,name:type`` (types: see ``TYPES``)."""
    fields = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, typ = part.partition(":")
        if not sep or typ.strip() not in TYPES:
            raise ValueError(f"bad column {part!r} in --schema: write NAME:TYPE with TYPE one of {sorted(TYPES)}")
        fields.append(pa.field(name.strip(), TYPES[typ.strip()]))
    if not fields:
        raise ValueError("--schema names no columns")
    return pa.schema(fields)
