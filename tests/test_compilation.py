"""infodec.compilation.compile_time: what a call spends compiling, from JAX's own events."""

import jax
import jax.numpy as jnp

from infodec.compilation import compile_time


def test_a_fresh_program_is_counted_and_a_compiled_one_costs_nothing():
    f = jax.jit(lambda x: jnp.sin(x) * 3 + 1)
    x = jnp.ones((13, 7))  # a shape nothing else compiles
    with compile_time() as first:
        f(x).block_until_ready()
    assert first.programs == 1 and first.xla_s > 0 and first.tracing_s > 0 and first.lowering_s > 0
    assert first.total_s == first.tracing_s + first.lowering_s + first.xla_s
    with compile_time() as again:
        f(x).block_until_ready()
    assert again.programs == 0 and again.total_s == 0.0
    assert "XLA" in str(first) and "1 programs" in str(first)


def test_compilation_in_another_thread_is_counted_and_listeners_are_removed():
    import threading

    g = jax.jit(lambda x: jnp.cos(x) - 2)
    x = jnp.ones((11, 5))
    with compile_time() as record:
        worker = threading.Thread(target=lambda: g(x).block_until_ready())
        worker.start()
        worker.join()
    assert record.programs == 1
    with compile_time() as outer:
        pass
    g(jnp.ones((9, 3))).block_until_ready()  # after the block: not counted by either record
    assert outer.programs == 0 and record.programs == 1
