"""The memory plan (``infodec.decoding.memory``): its figures against measurements, and the one clear error.

* Accuracy: the plan of three ``generate`` settings (different rows, lengths and peak phases) is within
  10% of the peak memory the call really adds on XLA:CPU, where device memory is host memory. The
  measurement is the process's resident-set high-water mark (``VmHWM``, reset before the call) above the
  resident size before it, in a child process whose allocator returns freed memory (``tests/memory_check.py``
  explains why), the median of five calls (the same call's prefill peak now and then measures ~10 MB
  more, see there): unlike XLA's own ``memory_analysis`` of one compiled function, it sees the whole call
  (prefill, the broadcast to ``num_samples`` rows, the loop) and everything that lives across them. The
  comparison leaves the parameters out (they are in both, exactly): what is compared is what the call adds.
  A second test checks the decode loop alone against ``memory_analysis`` for policies with many
  full-vocabulary temporaries (top-p) and two streams (CFG).
* The error: a request over a given limit (``$INFODEC_MEMORY_LIMIT``) ends in :class:`MemoryPlanError`
  before anything is compiled or allocated, naming the parts and the largest rows that fit; those rows
  pass and one more fails; every entry point (generate, stream, beam and contrastive search, DAEMON's
  fit and sample) raises it.
* Parameters: the plan counts exactly the leaves' bytes (one device's shards on a mesh), and the config's
  abstract tree gives the same figure without the parameters.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infodec
from infodec import daemon
from infodec.decoding import engine, memory
from infodec.decoding.memory import MemoryPlanError
from tests.tiny_models import tiny_llama

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [[1, 2, 3], [4, 5], [3, 1, 4, 1, 5], [2, 2], [5, 4, 3, 2], [1], [2, 3, 4]]
NEW = 8


def child(mode: str, env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.memory_check", mode],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, f"memory_check {mode} failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama()


@pytest.fixture
def limit(monkeypatch):
    """Sets ``$INFODEC_MEMORY_LIMIT`` (bytes) for the test."""
    return lambda value: monkeypatch.setenv(memory.LIMIT_ENV, str(value))


def generate_plan(model, params, rows, policy, *, num_samples=1):
    """The plan ``generate`` checks for ``PROMPTS[:rows // num_samples]``."""
    longest = max(len(p) for p in PROMPTS[: rows // num_samples])
    return memory.memory_plan(
        model,
        rows=rows,
        max_len=longest + NEW,
        prompt_len=longest,
        num_samples=num_samples,
        params=params,
        policy=policy,
        num_diagnostics=memory.DEFAULT_DIAGNOSTICS,
    )


# --- accuracy -----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_plan_is_within_ten_percent_of_the_measured_peak():
    report = child("peak", {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_ARENA_MAX": "1"})
    settings = report["settings"]
    assert len({(s["rows"], s["max_len"]) for s in settings}) == 3
    assert {s["phase"] for s in settings} == {"prefill", "decode"}, settings  # both kinds of peak are exercised
    for s in settings:
        assert s["measured"] > 50 * 2**20, s  # far above the resident-size noise of a few MB
        assert abs(s["plan"] - s["measured"]) <= 0.10 * s["measured"], s


@pytest.mark.slow
@pytest.mark.parametrize("policy", [infodec.TopP(0.9), infodec.ClassifierFreeGuidance(2.0)], ids=["top_p", "cfg"])
def test_decode_loop_matches_xla_memory_analysis(policy):
    """The plan's decode phase against XLA's accounting of the compiled loop (arguments + outputs not
    aliased to them + temporaries), on a vocabulary large enough for the logits' temporaries to matter."""
    model, params = tiny_llama(
        vocab_size=16384, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2, head_dim=16
    )
    policy = engine.canonical_policy(policy)
    streams, rows, prompt_len, new = policy.num_streams, 16, 16, 48
    bucket, buffer = 16, 48
    cache = jax.eval_shape(lambda: model.init_cache(rows * streams, bucket + buffer))
    logits = jax.ShapeDtypeStruct((rows * streams, model.vocab_size), jnp.float32)
    positions = np.tile(np.arange(bucket), (rows * streams, 1))
    state = jax.eval_shape(
        lambda x, c: engine._initial_state(  # the state generate builds
            x,
            c,
            positions=positions,
            tokens=positions,
            key=jax.random.key(0),
            buffer=buffer,
            num_samples=1,
            policy=policy,
            real_rows=rows,
            max_new_tokens=new,
        ),
        logits,
        cache,
    )
    compiled = engine._decode_loop.lower(
        model, params, policy, state, chunk=16, structure=engine.policy_structure(policy)
    ).compile()
    stats = compiled.memory_analysis()
    assert stats is not None  # XLA:CPU reports it
    xla = stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
    xla += stats.temp_size_in_bytes
    plan = memory.memory_plan(
        model, rows=rows, max_len=prompt_len + new, prompt_len=prompt_len, params=params, policy=policy
    )
    decode = dict(plan.phase_totals)["decode"]
    assert abs(decode - xla) <= 0.05 * xla, (decode, xla, plan)


# --- the error ----------------------------------------------------------------------------------------


def test_a_request_over_the_limit_names_what_does_not_fit_and_the_rows_that_do(tiny, limit):
    model, params = tiny
    policy = infodec.Temperature(1.0)
    fits = generate_plan(model, params, 5, policy)
    limit(fits.total)  # exactly 5 rows' worth of memory
    before = infodec.compile_count()
    with pytest.raises(MemoryPlanError) as caught:
        infodec.generate(model, params, PROMPTS[:7], policy, jax.random.key(0), max_new_tokens=NEW)
    error = caught.value
    assert isinstance(error, ValueError) and error.largest_rows == 5
    message = str(error)
    assert message.startswith("generate does not fit in device memory: 7 rows")
    for part in (
        "parameters",
        "KV cache",
        "decode buffers",
        "logits",
        "working",
        "INFODEC_MEMORY_LIMIT",
        "At most 5 rows fit",
    ):
        assert part in message, message
    assert infodec.compile_count() == before  # refused before anything was compiled (or allocated)
    # the named rows pass the check and one more row fails it, at the same limit
    assert generate_plan(model, params, 5, policy).check() is not None
    with pytest.raises(MemoryPlanError):
        generate_plan(model, params, 6, policy).check()
    out = infodec.generate(model, params, PROMPTS[:5], policy, jax.random.key(0), max_new_tokens=NEW)
    assert out.tokens.shape == (5, NEW)


def test_the_largest_rows_are_whole_prompts_of_num_samples(tiny, limit):
    model, params = tiny
    policy = infodec.TopP(0.9)
    plan = generate_plan(model, params, 6, policy, num_samples=3)  # 2 prompts x 3 samples
    limit(plan.total + 1)
    with pytest.raises(MemoryPlanError, match=r"At most 6 rows fit \(2 prompts x num_samples=3\)") as caught:
        infodec.generate(model, params, PROMPTS[:3], policy, jax.random.key(0), max_new_tokens=NEW, num_samples=3)
    assert caught.value.largest_rows == 6
    assert generate_plan(model, params, 9, policy, num_samples=3).total > plan.total + 1


@pytest.mark.parametrize("entry", ["stream", "beam_search", "contrastive_search", "daemon.fit", "daemon.sample"])
def test_every_entry_point_checks_before_allocating(tiny, limit, entry):
    model, params = tiny
    limit("160K")  # the parameters and one prompt fit, four prompts do not
    prompts = PROMPTS[:4]
    key = jax.random.key(0)
    calls = {
        "stream": lambda: next(
            infodec.stream(model, params, prompts, infodec.Temperature(1.0), key, max_new_tokens=40, num_samples=8)
        ),
        "beam_search": lambda: infodec.beam_search(model, params, prompts, num_beams=4, max_new_tokens=40),
        "contrastive_search": lambda: infodec.contrastive_search(model, params, prompts, top_k=4, max_new_tokens=40),
        "daemon.fit": lambda: daemon.fit(
            model, params, prompts, prompts, ["sr2"], num_samples=8, max_new_tokens=40, key=key
        ),
        "daemon.sample": lambda: daemon.sample(
            model, params, prompts, np.zeros(1), ["sr2"], num_candidates=8, max_new_tokens=40, key=key
        ),
    }
    before = infodec.compile_count()
    with pytest.raises(MemoryPlanError, match="does not fit in device memory") as caught:
        calls[entry]()
    assert str(caught.value).startswith(entry), str(caught.value)
    assert caught.value.largest_rows >= 1
    assert infodec.compile_count() == before


def test_parameters_that_alone_exceed_the_limit_are_named(tiny, limit):
    model, params = tiny
    limit(memory.param_bytes(model, params) // 2)
    with pytest.raises(MemoryPlanError, match="Not even one row fits: the parameters alone take") as caught:
        infodec.generate(model, params, PROMPTS[:2], infodec.Greedy(), jax.random.key(0), max_new_tokens=NEW)
    assert caught.value.largest_rows == 0


def test_the_limit_variable(tiny, limit):
    model, params = tiny
    limit("off")
    assert memory.memory_limit() is None
    assert memory.check_memory(model, params, rows=10**6, max_len=64, what="x") is None  # not checked
    limit("1.5 GiB")
    assert memory.memory_limit() == memory.MemoryLimit(3 * 2**29, "$INFODEC_MEMORY_LIMIT=1.5 GiB")
    limit("lots")
    with pytest.raises(ValueError, match="INFODEC_MEMORY_LIMIT: a memory limit must be bytes"):
        memory.memory_limit()
    assert [memory.parse_bytes(v) for v in (123, "2k", "3MB", "1g", "2TiB")] == [123, 2048, 3 << 20, 1 << 30, 2 << 40]


def test_without_a_variable_cpu_uses_the_available_host_memory(tiny, monkeypatch):
    model, params = tiny
    monkeypatch.delenv(memory.LIMIT_ENV, raising=False)
    found = memory.memory_limit(None, params)
    available = memory.host_available_bytes()
    assert found is not None and available is not None and found.source.startswith("host RAM")
    held = memory.param_bytes(model, params)  # resident parameters count as available to their plan
    assert abs(found.bytes - (available + held)) < 256 * 2**20  # the free memory moves a little between reads


def test_the_launcher_helper_keeps_every_study_decode_within_the_limit(tiny):
    from infodec.studies.daemon import DaemonConfig, rows_per_call_that_fits

    model, params = tiny
    sizes: dict[str, Any] = dict(max_len=32 + 64, prompt_len=32, params=params)
    cap = memory.memory_plan(model, rows=10, **sizes).total
    greedy = DaemonConfig(studies=("main",), baselines=("greedy",), prompt_tokens=32, max_new_tokens=64)
    assert rows_per_call_that_fits(model, params, greedy, limit=cap) == 10
    beam = DaemonConfig(studies=("main",), baselines=("greedy", "beam"), prompt_tokens=32, max_new_tokens=64)
    beam_fits = [memory.memory_plan(model, rows=b, decoder="beam", width=4, **sizes).fits(cap) for b in range(1, 9)]
    prompts = beam_fits.index(False)  # by brute force: the most prompts of four beams within the limit
    # a search decodes rows_per_call // 4 prompts: at most `prompts` of them
    assert rows_per_call_that_fits(model, params, beam, limit=cap) == min(10, 4 * prompts + 3)


# --- parameters -----------------------------------------------------------------------------------------


def test_parameter_bytes_are_the_leaves_bytes(tiny):
    model, params = tiny
    leaves = sum(x.nbytes for x in jax.tree.leaves(params))
    plan = memory.memory_plan(model, rows=4, max_len=32, params=params)
    assert plan.params == leaves
    assert memory.memory_plan(model, rows=4, max_len=32).params == leaves  # the config's abstract tree
    half = memory.memory_plan(model, rows=4, max_len=32, dtype="bfloat16")
    assert half.params == leaves // 2
    as_numpy = jax.tree.map(np.asarray, params)
    assert memory.memory_plan(model, rows=4, max_len=32, params=as_numpy).params == leaves
    big = memory.memory_plan(model, rows=4, max_len=32, cache_dtype="bfloat16")
    assert big.kv_cache < plan.kv_cache


@pytest.mark.subprocess
def test_parameter_bytes_on_a_mesh_are_one_devices_shards():
    report = child("mesh", {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert report["devices"] == 8
    assert report["plan_placed"] == report["device_shard_bytes"] < report["full_bytes"] / 2
    assert report["plan_unplaced"] == report["plan_abstract"] == report["device_shard_bytes"]
    assert report["kv_cache_mesh"] < report["kv_cache_single"] / 4  # rows / 2 and KV heads / 4


def test_plan_reads_as_a_table(tiny):
    model, params = tiny
    text = str(memory.memory_plan(model, rows=4, max_len=40, params=params, num_samples=2))
    assert text.startswith("memory plan: 4 rows of ")
    for line in ("parameters", "KV cache", "decode buffers", "logits", "working", "total"):
        assert f"\n  {line} " in text, text
