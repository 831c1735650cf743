"""The intake peeks the framing and decodes only what the genealogy reads; every bad record is
still judged by exactly one side (the intake or the sink)."""

from __future__ import annotations

import pytest

from schemas.errors import MalformedRecordError, UnknownSchemaError
from schemas.samples import sample_events
from schemas.serde import AvroSerde
from streams.genealogy import commands_for_event
from streams.intake import GENEALOGY_TYPES, Accepted, DeadLetter, intake_judges, route

SERDE = AvroSerde()
ENCODED = {e.type: SERDE.encode_event(e) for e in sample_events()}


@pytest.mark.parametrize("type_name", sorted(ENCODED))
def test_peek_type_matches_decode(type_name: str) -> None:
    data = ENCODED[type_name]
    assert SERDE.peek_type(data) == SERDE.decode(data)[0] == type_name


def test_peek_type_rejects_bad_headers_like_decode() -> None:
    for bad in (b"", b"\xc3", b"\xffgarbage", b"\xc3\x01\x00"):
        with pytest.raises(MalformedRecordError):
            SERDE.peek_type(bad)
    with pytest.raises(UnknownSchemaError):
        SERDE.peek_type(b"\xc3\x01" + bytes(8) + b"body")


@pytest.mark.parametrize("type_name", sorted(ENCODED))
def test_genealogy_types_are_exactly_those_with_commands(type_name: str) -> None:
    _t, record = SERDE.decode(ENCODED[type_name])
    if type_name not in GENEALOGY_TYPES:
        assert commands_for_event(record, type_name) == []


@pytest.mark.parametrize("type_name", sorted(ENCODED))
def test_route_decodes_only_genealogy_types(type_name: str) -> None:
    out = route(SERDE, b"k", ENCODED[type_name], "t", 0, 1)
    assert isinstance(out, Accepted) and out.type_name == type_name
    assert (out.record is not None) == (type_name in GENEALOGY_TYPES)


@pytest.mark.parametrize("type_name", sorted(ENCODED))
def test_a_truncated_body_is_judged_by_exactly_one_side(type_name: str) -> None:
    data = ENCODED[type_name]
    bad = data[: len(data) - 3]
    with pytest.raises(MalformedRecordError):
        SERDE.decode(bad)  # the sink cannot land it either way
    out = route(SERDE, b"k", bad, "t", 0, 1)
    if intake_judges(SERDE, bad):
        assert type_name in GENEALOGY_TYPES
        assert isinstance(out, DeadLetter)
    else:
        assert type_name not in GENEALOGY_TYPES
        assert isinstance(out, Accepted) and out.commands == []  # the sink dead-letters it


def test_bad_framing_is_the_intakes() -> None:
    for bad in (None, b"\xffgarbage", b"\xc3\x01" + bytes(8) + b"x"):
        assert intake_judges(SERDE, bad)
        assert isinstance(route(SERDE, b"k", bad, "t", 0, 1), DeadLetter)
