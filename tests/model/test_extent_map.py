"""Extent maps: packing, coverage and the overlay that resolves a chain."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from cbtbackup.model.extent_map import ZERO_DIGEST, ExtentMap, overlay, resolve_chain

SIZE = 200


def d(n: int) -> bytes:
    return bytes([n]) * 32


def test_round_trip_and_digest() -> None:
    m = ExtentMap()
    m.append(0, 10, d(1))
    m.append(10, 5, ZERO_DIGEST)
    m.append(20, 7, d(2), chunk_offset=3)
    again = ExtentMap.from_bytes(m.to_bytes())
    assert again == m
    assert list(again)[2].chunk_offset == 3
    assert again.map_digest() == m.map_digest()
    assert not m.covers(27)
    assert m.stored_bytes() == 17


def test_overlay_cuts_older_pieces() -> None:
    old = ExtentMap()
    old.append(0, 100, d(1))
    new = ExtentMap()
    new.append(10, 5, d(2))
    new.append(50, 10, d(3))
    got = [(p.offset, p.length, p.digest[0], p.chunk_offset) for p in overlay(new, old)]
    assert got == [(0, 10, 1, 0), (10, 5, 2, 0), (15, 35, 1, 15), (50, 10, 3, 0), (60, 40, 1, 60)]


def byte_owner(maps: list[ExtentMap]) -> list[tuple[int, int] | None]:
    """For each byte: (digest id, position in chunk) of the newest map covering it."""
    owner: list[tuple[int, int] | None] = [None] * SIZE
    for m in reversed(maps):  # oldest first, newer overwrite
        for p in m:
            for b in range(p.offset, p.end):
                owner[b] = (p.digest[0], p.chunk_offset + b - p.offset)
    return owner


@st.composite
def maps(draw: st.DrawFn) -> ExtentMap:
    cuts = sorted(set(draw(st.lists(st.integers(0, SIZE), max_size=12))))
    m = ExtentMap()
    for a, b in itertools.pairwise(cuts):
        if draw(st.booleans()):
            m.append(a, b - a, d(draw(st.integers(1, 255))), draw(st.integers(0, 50)))
    return m


@given(st.lists(maps(), min_size=1, max_size=5))
def test_overlay_matches_a_byte_model_whatever_the_grouping(chain: list[ExtentMap]) -> None:
    newest_first = chain[0]
    for older in chain[1:]:
        newest_first = overlay(newest_first, older)
    oldest_first = chain[-1]
    for newer in reversed(chain[:-1]):
        oldest_first = overlay(newer, oldest_first)
    assert byte_owner([newest_first]) == byte_owner(chain)
    assert newest_first == oldest_first  # the same pieces: the map digest does not depend on the fold
    assert resolve_chain(chain) == newest_first  # the one-pass sweep too, piece for piece


def test_resolve_chain_of_one_and_with_gaps() -> None:
    only = ExtentMap()
    only.append(5, 10, d(1))
    assert resolve_chain([only]) is only
    newer = ExtentMap()
    newer.append(40, 10, d(2))
    got = [(p.offset, p.length, p.digest[0], p.chunk_offset) for p in resolve_chain([newer, only])]
    assert got == [(5, 10, 1, 0), (40, 10, 2, 0)]
