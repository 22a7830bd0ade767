"""Embedding a task (embedding.py): the shards of ranks cover every item once."""

from __future__ import annotations


def test_shard_bounds_cover_every_item_once():
    from sbir_bench.embedding import shard_bounds
    for n in (0, 1, 5, 17):
        for world in (1, 2, 3, 4):
            spans = [shard_bounds(n, r, world) for r in range(world)]
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
