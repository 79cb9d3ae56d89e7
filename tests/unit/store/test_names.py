from __future__ import annotations

import pytest

from granary.errors import InvalidNameError
from granary.store.names import check_dataset_name, parse_ref


@pytest.mark.parametrize("name", ["web", "web-v2", "a", "c4.en", "x_1", "0abc"])
def test_valid_dataset_names(name: str) -> None:
    assert check_dataset_name(name) == name


@pytest.mark.parametrize("name", ["", "../x", "a/b", "Web", "-x", ".hidden", "a..b", "x" * 129, "a b", "é"])
def test_invalid_dataset_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidNameError, match="invalid dataset name"):
        check_dataset_name(name)


def test_parse_ref_forms() -> None:
    assert parse_ref("web") .rev is None
    assert parse_ref("web@main").rev == "main"
    assert parse_ref("web@3fa2c9").rev == "3fa2c9"
    assert str(parse_ref("web@release/1")) == "web@release/1"


@pytest.mark.parametrize("ref", ["web@", "web@../etc", "../web@main", "web@a//b", "@main"])
def test_bad_refs_are_refused(ref: str) -> None:
    with pytest.raises(InvalidNameError):
        parse_ref(ref)
