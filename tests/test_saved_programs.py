"""Saved programs (infodec.compilation.saved_program): a later process calls the exported prefill and
decode loop instead of tracing them, and gets exactly what the traced programs give."""

import logging

import jax
import numpy as np
import pytest

import infodec
from infodec import compilation
from infodec.decoding import engine
from infodec.policies import named
from tests.tiny_models import tiny_llama

PROMPTS = [[1, 2, 3], [4], [5, 0]]


@pytest.fixture
def saved(tmp_path):
    """Saved programs on, in a folder of this test's own; off again afterwards."""
    compilation.save_programs(tmp_path)
    compilation.forget_saved_programs()
    yield tmp_path
    compilation.save_programs(None)
    compilation.forget_saved_programs()


@pytest.fixture(scope="module")
def tiny():
    model, params = tiny_llama(seed=2)
    return model, jax.device_put(params, jax.devices()[0])


def decode(tiny, policy, key=0, **options):
    model, params = tiny
    return infodec.generate(model, params, PROMPTS, policy, jax.random.key(key), max_new_tokens=7, **options)


def assert_same(a, b):
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logp_model, b.logp_model)
    np.testing.assert_array_equal(a.logp_policy, b.logp_policy)


def test_a_later_process_loads_the_programs_without_tracing_and_decodes_the_same(tiny, saved):
    policy = named.build("top_p", temperature=0.9, top_p=0.8)
    compilation.save_programs(None)
    traced = decode(tiny, policy, num_samples=2)  # jitted as usual
    assert list(saved.iterdir()) == []
    compilation.save_programs(saved)
    first = decode(tiny, policy, num_samples=2)  # exports prefill and the loop
    names = sorted(p.name.split("-")[0] for p in saved.iterdir())
    assert names == ["_decode_loop_impl", "prefill"]
    compilation.forget_saved_programs()  # as a new process: nothing loaded
    before = engine.compile_count()
    later = decode(tiny, policy, num_samples=2)
    assert engine.compile_count() == before  # neither program was traced
    assert_same(traced, first)
    assert_same(traced, later)


def test_a_different_policy_structure_or_shape_saves_a_program_of_its_own(tiny, saved):
    decode(tiny, named.build("top_p", temperature=0.9, top_p=0.8))
    decode(tiny, named.build("top_k", temperature=0.9, top_k=3))  # same leaves' shapes, another class
    decode(tiny, named.build("top_k", temperature=0.5, top_k=2))  # new values only: the same program
    decode(tiny, named.build("top_k", temperature=0.9, top_k=3), num_samples=3)  # more rows
    loops = [p for p in saved.iterdir() if p.name.startswith("_decode_loop_impl")]
    assert len(loops) == 3


def test_a_damaged_file_is_exported_again(tiny, saved, caplog):
    policy = named.build("temperature", temperature=0.7)
    want = decode(tiny, policy, key=3)
    for path in saved.iterdir():
        path.write_bytes(b"not a program")
    compilation.forget_saved_programs()
    with caplog.at_level(logging.WARNING):
        got = decode(tiny, policy, key=3)
    assert "ignoring saved program" in caplog.text
    assert_same(want, got)
    compilation.forget_saved_programs()
    assert_same(want, decode(tiny, policy, key=3))  # the rewritten files load


def test_stream_uses_the_saved_chunk_program(tiny, saved):
    model, params = tiny
    policy = named.build("temperature", temperature=0.7)
    key = jax.random.key(5)
    chunks = list(infodec.stream(model, params, PROMPTS, policy, key, max_new_tokens=6, stop_tokens=(), chunk=2))
    compilation.save_programs(None)
    plain = list(infodec.stream(model, params, PROMPTS, policy, key, max_new_tokens=6, stop_tokens=(), chunk=2))
    assert any(p.name.startswith("_decode_chunk_impl") for p in saved.iterdir())
    np.testing.assert_array_equal(np.concatenate(chunks, 1), np.concatenate(plain, 1))


def test_off_under_disable_jit_and_for_arrays_on_a_mesh(tiny, saved):
    model, params = tiny
    with jax.disable_jit():
        assert compilation.saved_program("f", lambda x: x, (), (params,)) is None
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    placed = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    assert compilation.saved_program("f", lambda x: x, (), (placed,)) is None
    assert list(saved.iterdir()) == []


@pytest.mark.parametrize("policy", ["greedy", "kl_guided"])
def test_greedy_and_two_stream_policies_decode_the_same_from_saved_programs(tiny, saved, policy):
    from infodec.policies.value import KLGuidedTemperature

    options = {}
    if policy == "kl_guided":
        options["evidence"] = [[3, 3, 1], [2], [0, 4, 4, 1]]  # two streams: evidence + prompt, and the prompt
    chosen = named.build("greedy") if policy == "greedy" else KLGuidedTemperature(0.9, 1.0)
    compilation.save_programs(None)
    want = decode(tiny, chosen, key=7, **options)
    compilation.save_programs(saved)
    decode(tiny, chosen, key=7, **options)  # exports
    compilation.forget_saved_programs()
    assert_same(want, decode(tiny, chosen, key=7, **options))


def test_donating_an_argument_that_is_not_there_is_one_clear_error():
    with pytest.raises(ValueError, match=r"donate_argnums \(1,\) must index the 1 arguments"):
        compilation.saved_program("f", lambda x: x, (), (np.zeros(2),), donate_argnums=(1,))
