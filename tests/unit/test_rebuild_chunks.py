"""A rebuild's heap chunks: together they cover every block of the events table, once each."""

from projections.rebuild import heap_chunks


def test_heap_chunks_cover_the_heap_and_what_lies_past_it_without_overlap():
    for blocks in (0, 1, 127, 128, 129, 4_096, 54_321):
        chunks = heap_chunks(blocks)
        assert chunks[0].first == 0
        assert all(a.stop == b.first for a, b in zip(chunks, chunks[1:]))
        assert all(chunk.first < chunk.stop for chunk in chunks)
        assert chunks[-1].stop == 0xFFFFFFFF  # past any block, so blocks added since are covered too
        assert len(chunks) <= 33


def test_a_big_heap_is_split_into_about_32_chunks_and_a_small_one_is_not_split_finely():
    assert len(heap_chunks(54_321)) == 32
    assert len(heap_chunks(300)) == 3
