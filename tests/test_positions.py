from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.positions import (
    MAX_TIMESTAMP,
    PositionError,
    check_entity,
    format_token,
    parse_timestamp,
    parse_token,
    parse_token_header,
)

ENTITY = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,254}", fullmatch=True)
TIMESTAMP = st.integers(min_value=0, max_value=MAX_TIMESTAMP)


def test_eventstreamex_example_date_time_is_microseconds_since_epoch() -> None:
    assert parse_timestamp("2015-01-23T23:50:07.123Z") == 1422057007123000
    assert parse_timestamp("2015-01-23T23:50:07.123") == 1422057007123000  # no offset = UTC
    assert parse_timestamp("2015-01-24T00:50:07.123+01:00") == 1422057007123000
    assert parse_timestamp("2015-01-23 23:50:07.123456789Z") == 1422057007123456  # truncated


def test_integer_forms_are_accepted() -> None:
    assert parse_timestamp(1422057007123000) == 1422057007123000
    assert parse_timestamp("1422057007123000") == 1422057007123000
    assert parse_timestamp(0) == 0
    assert parse_timestamp(MAX_TIMESTAMP) == MAX_TIMESTAMP


@pytest.mark.parametrize(
    "value",
    [-1, MAX_TIMESTAMP + 1, "9223372036854775808", True, 1.5, 1.0, 1e15, None, [], {}, "",
     "12a",
     "2015-13-01T00:00:00Z", "2015-01-23", "1969-12-31T23:59:59Z", "2015-01-23T23:50:07+99:00",
     " 12", "0x10"],
)
def test_invalid_timestamps_are_rejected_with_a_message(value: object) -> None:
    with pytest.raises(PositionError, match="timestamp"):
        parse_timestamp(value)


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31),
                    timezones=st.just(UTC)))
def test_rfc3339_round_trips_through_microseconds(moment: datetime) -> None:
    text = moment.isoformat().replace("+00:00", "Z")
    micros = parse_timestamp(text)
    assert datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros) == moment


@given(TIMESTAMP)
def test_digit_strings_and_ints_agree(value: int) -> None:
    assert parse_timestamp(str(value)) == parse_timestamp(value) == value


@given(ENTITY)
def test_valid_entity_names_pass(name: str) -> None:
    assert check_entity(name) == name


@pytest.mark.parametrize("name", ["", ".posts", ":posts", "-posts", "po/sts", "po sts", "é",
                                  "a" * 256, "posts?x"])
def test_invalid_entity_names_are_rejected(name: str) -> None:
    with pytest.raises(PositionError, match="entity name"):
        check_entity(name)


@given(ENTITY, TIMESTAMP)
def test_token_round_trip(entity: str, timestamp: int) -> None:
    token = format_token(entity, timestamp)
    assert parse_token(token) == (entity, timestamp)
    assert parse_token(f'"{token}"') == (entity, timestamp)


def test_token_header_takes_commas_quotes_and_several_lines() -> None:
    lines = ['"posts/1422057007123000", comments/2015-01-23T23:50:07Z', "likes/5"]
    assert parse_token_header(lines) == [
        ("posts", 1422057007123000), ("comments", 1422057007000000), ("likes", 5)]
    assert parse_token_header([" , "]) == []


@pytest.mark.parametrize("token", ["posts", "posts/", "/5", "posts/abc", "po st/5"])
def test_malformed_tokens_are_rejected(token: str) -> None:
    with pytest.raises(PositionError):
        parse_token(token)


@pytest.mark.parametrize(("value", "says"), [
    (1.0, "fraction or an exponent"), (1e15, "fraction or an exponent"),
    (1e23, "out of range"), (MAX_TIMESTAMP + 1, "between 0 and"),
])
def test_non_integers_and_out_of_range_numbers_say_which(value: object, says: str) -> None:
    with pytest.raises(PositionError, match=says):
        parse_timestamp(value)
