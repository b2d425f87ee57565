"""infodec.batching: the one fixed-size-chunk helper every row loop uses."""

import numpy as np
import pytest

from infodec.batching import fixed_batches, map_in_chunks


def test_fixed_batches_cover_every_row_once():
    seen = [(rows.tolist(), kept) for rows, kept in fixed_batches(5, 2)]
    assert seen == [([0, 1], 2), ([2, 3], 2), ([4, 4], 1)]
    with pytest.raises(ValueError, match="batch_size"):
        list(fixed_batches(3, 0))


def test_map_in_chunks_sees_one_shape_and_returns_rows_in_order():
    shapes = []

    def square(rows, chunk):
        shapes.append(rows.shape)
        return rows**2

    np.testing.assert_array_equal(map_in_chunks(square, 7, 3), np.arange(7) ** 2)
    assert shapes == [(3,)] * 3  # the last chunk [6, 6, 6] is padded to the same shape


def test_map_in_chunks_joins_tuples_dicts_and_lists_with_rows_per_item():
    def two_samples_each(rows, chunk):  # two rows per item, as generate(num_samples=2) returns
        ids = np.repeat(rows, 2)
        return ids, {"chunk": np.full(len(ids), chunk)}, [f"t{i}" for i in ids]

    ids, extra, text = map_in_chunks(two_samples_each, 3, 2, rows_per_item=2)
    np.testing.assert_array_equal(ids, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(extra["chunk"], [0, 0, 0, 0, 1, 1])
    assert text == ["t0", "t0", "t1", "t1", "t2", "t2"]


def test_map_in_chunks_with_a_chunk_larger_than_the_rows_pads_to_the_chunk_size():
    calls = []
    assert map_in_chunks(lambda rows, chunk: calls.append(rows.tolist()) or rows, 2, 4).tolist() == [0, 1]
    assert calls == [[0, 1, 1, 1]]
    with pytest.raises(ValueError, match="at least one row"):
        map_in_chunks(lambda rows, chunk: rows, 0, 4)
    with pytest.raises(ValueError, match="chunk size >= 1"):
        map_in_chunks(lambda rows, chunk: rows, 3, 0)
