"""The renderer's idempotency keys (hashed from a kept prefix) are :func:`idempotency_key`'s."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from campaignkit._engine._render import idempotency_key, key_maker

names = st.text(st.characters(blacklist_categories=()), max_size=20)  # lone surrogates too


@given(names, names, st.lists(st.integers(min_value=0, max_value=10**12), max_size=5))
def test_key_maker_gives_the_documented_keys(run_id: str, channel: str, seqs: list[int]) -> None:
    key = key_maker(run_id, channel)
    assert [key(seq) for seq in seqs] == [idempotency_key(run_id, channel, seq) for seq in seqs]
