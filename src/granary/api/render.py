"""Render response bodies in one pass: plain dicts serialized by a cached pydantic TypeAdapter.

The API's pydantic models (:mod:`granary.api.schemas`) stay the documented contract (the OpenAPI document is made
from them). For the hot list and detail routes, building a model per row and letting FastAPI validate and
serialize it again costs more than the query; here each model is mirrored once as a ``TypedDict`` with the same
fields and types, and its TypeAdapter writes the rows (dicts straight from the database) to JSON in Rust: fields
in the model's order, its aliases, ints widened to floats where the model says float, unknown keys left out.
"""

from __future__ import annotations

import functools
import typing
from typing import Any

from fastapi.responses import Response
from pydantic import BaseModel, TypeAdapter
from typing_extensions import TypedDict  # pydantic needs typing_extensions' TypedDict before Python 3.12


@functools.cache
def _typed_dict(model: type[BaseModel]) -> Any:
    """A TypedDict with ``model``'s fields (by alias), nested models and lists of them mirrored too."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        fields[info.alias or name] = _mirror(info.annotation)  # the routes give every field
    return TypedDict(f"{model.__name__}Body", fields)  # type: ignore[operator]


def _mirror(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _typed_dict(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and args:
        return list[_mirror(args[0])]  # type: ignore[misc]
    return annotation


@functools.cache
def _adapter(model: type[BaseModel], paged: bool) -> TypeAdapter[Any]:
    item: Any = _typed_dict(model)
    if not paged:
        return TypeAdapter(item)
    page: Any = TypedDict(f"{model.__name__}PageBody",  # type: ignore[misc]  # a name made at run time
                          {"items": list[item], "next_cursor": str | None})
    return TypeAdapter(page)


def render(model: type[BaseModel], body: dict[str, Any]) -> Response:
    """A JSON response of ``body`` (a dict with ``model``'s fields) in ``model``'s shape."""
    return Response(_adapter(model, False).dump_json(body), media_type="application/json")


def render_page(model: type[BaseModel], items: list[dict[str, Any]], next_cursor: str | None) -> Response:
    """A JSON response of a page (:class:`granary.api.paging.Page`) of ``model`` items given as dicts."""
    body = {"items": items, "next_cursor": next_cursor}
    return Response(_adapter(model, True).dump_json(body), media_type="application/json")

