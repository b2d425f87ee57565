"""infodec.batching: the one fixed-size-chunk helper every row loop uses."""

import numpy as np
import pytest

from infodec.batching import checkpointed_chunks, fixed_batches, map_in_chunks


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


def test_checkpointed_chunks_resume_an_interrupted_call_from_its_last_finished_chunk(tmp_path):
    """The first run dies in chunk 2; the rerun loads chunks 0-1, computes only 2-3, and returns what an
    uninterrupted run returns. Unlabelled and nested calls are never saved."""
    calls: list[tuple[str, int]] = []

    def chunk(rows, i):
        calls.append(("outer", i))
        inner = map_in_chunks(lambda r, j: r * 10, len(rows), 1, checkpoint="inner")  # nested: part of chunk i
        if i == 2 and fail:
            raise KeyboardInterrupt
        return {"rows": rows, "tenfold": inner}

    fail = True
    with pytest.raises(KeyboardInterrupt), checkpointed_chunks(tmp_path):
        map_in_chunks(lambda rows, i: rows, 5, 5)  # unlabelled: not saved
        map_in_chunks(chunk, 7, 2, checkpoint="decode")
    assert [c for c in calls if c[0] == "outer"] == [("outer", 0), ("outer", 1), ("outer", 2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "decode-n7-size2-rows1-0-chunk00000.npz",
        "decode-n7-size2-rows1-0-chunk00001.npz",
    ]

    fail, calls[:] = False, []
    with checkpointed_chunks(tmp_path):
        resumed = map_in_chunks(chunk, 7, 2, checkpoint="decode")
    assert calls == [("outer", 2), ("outer", 3)]
    fresh = map_in_chunks(chunk, 7, 2)
    np.testing.assert_array_equal(resumed["rows"], np.arange(7))
    np.testing.assert_array_equal(resumed["tenfold"], fresh["tenfold"])


def test_saved_chunks_round_trip_their_nesting_and_dtypes_without_pickle(tmp_path):
    """A loaded chunk equals the saved one (tuple, dict, list; int, float, bool and string arrays) and the
    file is a plain ``.npz`` that loads with ``allow_pickle=False``; Python objects are refused."""
    part = (
        {"tokens": np.arange(6, dtype=np.int32).reshape(2, 3), "ok": np.array([True, False])},
        [np.array(["a", "bc"]), np.float64([0.5, -1.0])],  # pyright: ignore[reportArgumentType] (an array of a list)
    )
    with checkpointed_chunks(tmp_path):
        map_in_chunks(lambda rows, i: part, 2, 2, checkpoint="mixed")
    (saved,) = tmp_path.iterdir()
    np.load(saved, allow_pickle=False).close()
    with checkpointed_chunks(tmp_path):
        loaded = map_in_chunks(lambda rows, i: None, 2, 2, checkpoint="mixed")  # loaded, never called
    assert isinstance(loaded, tuple) and isinstance(loaded[0], dict) and isinstance(loaded[1], list)
    for got, want in zip([loaded[0]["tokens"], loaded[0]["ok"], *loaded[1]], [*part[0].values(), *part[1]]):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    with pytest.raises(TypeError, match="not Python objects"), checkpointed_chunks(tmp_path / "objects"):
        map_in_chunks(lambda rows, i: np.array([{"a": 1}, None]), 2, 2, checkpoint="objects")


def test_checkpointed_calls_of_one_label_are_told_apart_by_order_and_shape(tmp_path):
    """Two calls with the same label keep separate chunks (the n-th call of a signature); a call with
    other rows or chunk size never reads another's chunks."""
    with checkpointed_chunks(tmp_path):
        first = map_in_chunks(lambda rows, i: rows + 100, 3, 3, checkpoint="decode")
        second = map_in_chunks(lambda rows, i: rows + 200, 3, 3, checkpoint="decode")
        other_size = map_in_chunks(lambda rows, i: rows + 300, 3, 1, checkpoint="decode")
    assert (first.tolist(), second.tolist(), other_size.tolist()) == ([100, 101, 102], [200, 201, 202], [300, 301, 302])
    with checkpointed_chunks(tmp_path):  # everything is loaded: the functions would give other values now
        again = [map_in_chunks(lambda rows, i: rows, 3, 3, checkpoint="decode") for _ in range(2)]
    assert [a.tolist() for a in again] == [[100, 101, 102], [200, 201, 202]]
