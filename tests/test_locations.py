"""The one layer-set notation and the location names: every spelling reads back, every table cell
round-trips, and a bad part is one error naming the option."""

from __future__ import annotations

import random

import pytest

from tunescope.errors import InputError
from tunescope.locations import Location, format_layers, location, parse_layers, parse_location


@pytest.mark.parametrize(
    ("text", "layers"),
    [
        ("1-3,5", (1, 2, 3, 5)),
        ("4..6", (4, 5, 6)),
        ("4–6", (4, 5, 6)),
        (" 4 , 5,6 ", (4, 5, 6)),
        ("6,4,5,4", (4, 5, 6)),
        ("layer.2, layer.4", (2, 4)),
        ("none", ()),
        ("", ()),
        ("3", (3,)),
    ],
)
def test_every_spelling_reads(text, layers):
    assert parse_layers(text) == layers


def test_none_stays_none():
    assert parse_layers(None) is None


@pytest.mark.parametrize("seed", range(5))
def test_format_then_parse_is_the_identity_on_random_sets(seed):
    rng = random.Random(seed)
    for _ in range(200):
        layers = tuple(sorted(rng.sample(range(0, 25), rng.randint(0, 12))))
        text = format_layers(layers)
        assert parse_layers(text, first=0) == layers
        assert "-" not in text or len(layers) >= 3  # a range only for three or more consecutive layers


def test_format_is_canonical():
    assert format_layers([3, 1, 2]) == "1-3"
    assert format_layers([5, 6]) == "5,6"
    assert format_layers([1, 2, 3, 5, 7, 8, 9, 10]) == "1-3,5,7-10"
    assert format_layers([]) == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [("a,b", "takes layer numbers"), ("6-4", "runs backwards"), ("layer.3.ffn", "takes layer numbers")],
)
def test_bad_parts_name_the_option(text, message):
    with pytest.raises(InputError, match=message) as err:
        parse_layers(text, option="--ffn.layers")
    assert "--ffn.layers" in str(err.value)


def test_range_is_checked_against_the_model():
    assert parse_layers("1-6", n_layers=6) == (1, 2, 3, 4, 5, 6)
    with pytest.raises(InputError, match=r"layer\(s\) 0,7 out of range; this model's layers are 1..6"):
        parse_layers("0,7", n_layers=6)
    assert parse_layers("0,6", n_layers=6, first=0) == (0, 6)


def test_location_names_round_trip():
    for place in (Location(3), Location(3, head=5), Location(12, ffn=True)):
        assert parse_location(str(place)) == place
    assert location(3, head=0) == "layer.3.head.0"
    with pytest.raises(InputError, match="not a head and the FFN"):
        location(3, head=1, ffn=True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("layer.7", "layer 7 out of range"),
        ("layer.2.head.4", "head 4 out of range"),
        ("head.2", "not a location"),
    ],
)
def test_bad_locations(text, message):
    with pytest.raises(InputError, match=message):
        parse_location(text, n_layers=6, n_heads=4)
