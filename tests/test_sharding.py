"""Scale-out (``infodec.sharding``): meshes, sharding rules, and decoding on 8 forced CPU devices.

This pytest process has already initialised jax with one CPU device, so the multi-device checks run
``tests/sharding_check.py`` in a child process with ``--xla_force_host_platform_device_count=8`` and
compare what it reports here: greedy and sampled tokens on meshes (8, 1), (4, 2), (2, 4) equal the
single-device tokens (tiny Llama whose heads, KV heads, MLP and vocabulary split 2/4/8 ways; tiny GPT-2
and Gemma 3; SmolLM2-135M on (4, 2)), parameters and the decode state carry the intended specs,
DAEMON picks the same candidates, a second call compiles nothing, and the loop makes no transfer.
Rules, ``parse_mesh``, ``make_mesh`` errors and ``host_slice`` are tested in-process.
"""

import functools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import infodec
from infodec import sharding
from infodec.models import llama
from tests.tiny_models import SHARDABLE, tiny_gemma3, tiny_gpt2, tiny_llama

REPO = Path(__file__).resolve().parents[1]
MESHES = ["8x1", "4x2", "2x4"]


def child_env(devices: int) -> dict:
    return {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def run_check(*args: str) -> dict:
    """Runs ``python -m tests.sharding_check`` on 8 forced CPU devices; returns its JSON report."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.sharding_check", *args],
        cwd=REPO,
        env=child_env(8),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, f"sharding_check {args} failed:\n{proc.stderr[-4000:]}"
    return last_json(proc.stdout)


@pytest.fixture(scope="module")
def report():
    return run_check()


# --- multi-device (child process) ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.subprocess
def test_child_has_eight_devices(report):
    assert report["devices"] == 8


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.slow
@pytest.mark.subprocess
def test_greedy_tokens_equal_single_device(report, mesh):
    single, sharded = report["greedy"]["1x1"], report["greedy"][mesh]
    assert sharded["tokens"] == single["tokens"]
    assert sharded["lengths"] == single["lengths"]
    np.testing.assert_allclose(sharded["logp_model"], single["logp_model"], atol=1e-4)


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.slow
@pytest.mark.subprocess
def test_sampled_tokens_equal_single_device(report, mesh):
    """Temperature + top-p, two samples per prompt (6 rows: padded to 8 on the 8- and 4-way data axes)."""
    single, sharded = report["sampled"]["1x1"], report["sampled"][mesh]
    assert len(single["tokens"]) == 6
    assert sharded["tokens"] == single["tokens"]
    np.testing.assert_allclose(sharded["logp_model"], single["logp_model"], atol=1e-4)
    # The samples are not all alike (the comparison above would be weak otherwise).
    assert len({tuple(row) for row in single["tokens"]}) == 6


@pytest.mark.parametrize("case", ["two_stream", "per_row", "stream", "user_loop"])
@pytest.mark.slow
@pytest.mark.subprocess
def test_two_stream_per_row_and_stream_equal_single_device(report, case):
    """ClassifierFreeGuidance on (4, 2), per-row temperatures on (8, 1), ``stream`` on (2, 4), and a
    hand-written prefill/step/select/finish loop of ClassifierFreeGuidance with two samples on (4, 2)."""
    single, sharded = report["more"][case]
    assert np.shape(single) == ((6, 8) if case == "user_loop" else (3, 8))
    assert sharded == single


@pytest.mark.slow
@pytest.mark.subprocess
def test_teacher_force_on_a_padded_mesh_gives_the_log_probs_generate_recorded(report):
    """``generate``'s own ClassifierFreeGuidance tokens, teacher-forced on (4, 2), where the 3 prompts
    fill 4 rows (the padding row is fed ``pad_id`` and dropped by ``finish``): the same log π and log p_θ."""
    forced = report["teacher_force"]
    assert forced["rows"] == 4
    np.testing.assert_allclose(forced["forced"], forced["generated"], atol=1e-4)
    np.testing.assert_allclose(*forced["model"], atol=1e-4)
    # Under guidance π is not p_θ, so the first comparison is not the second one again.
    assert np.abs(np.subtract(forced["model"][0], forced["generated"])).max() > 1e-2


@pytest.mark.parametrize("family", ["gpt2", "gemma3"])
@pytest.mark.slow
@pytest.mark.subprocess
def test_other_families_equal_single_device(report, family):
    runs = report["families"][family]
    assert runs["2x4"]["tokens"] == runs["1x1"]["tokens"]
    np.testing.assert_allclose(runs["2x4"]["logp_model"], runs["1x1"]["logp_model"], atol=1e-4)


@pytest.mark.parametrize("mesh", ["4x2", "2x4"])
@pytest.mark.slow
@pytest.mark.subprocess
def test_parameters_split_on_model_axis(report, mesh):
    specs = report["param_specs"][mesh]
    assert specs["q_proj"] == [None, "model"]
    assert specs["k_proj"] == [None, "model"]
    assert specs["o_proj"] == ["model"]
    assert specs["gate_proj"] == [None, "model"]
    assert specs["down_proj"] == ["model"]
    assert specs["embed_tokens"] == ["model"]
    assert specs["lm_head"] == [None, "model"]
    assert specs["input_layernorm"] == []


@pytest.mark.slow
@pytest.mark.subprocess
def test_parameters_replicated_without_model_axis(report):
    assert all(spec == [] for spec in report["param_specs"]["8x1"].values())


@pytest.mark.parametrize(
    "mesh,rows,kv",
    [("8x1", 8, [None, "data"]), ("4x2", 8, [None, "data", "model"]), ("2x4", 6, [None, "data", "model"])],
)
@pytest.mark.slow
@pytest.mark.subprocess
def test_decode_state_rows_on_data_axis(report, mesh, rows, kv):
    """The state the jitted loop returns: 6 rows padded to a multiple of the data axis, cache ``[L, B,
    KVH, S, D]`` with B on "data" and KV heads on "model", logits whole over the vocabulary."""
    specs = report["state_specs"][mesh]
    assert specs["rows"] == rows
    assert specs["cache_k"] == kv
    assert specs["cache_positions"] == ["data"]
    assert specs["tokens"] == ["data"]
    assert specs["done"] == ["data"]
    assert specs["logits"] == ["data"]


@pytest.mark.parametrize("mesh", ["4x2", "8x1"])
@pytest.mark.slow
@pytest.mark.subprocess
def test_daemon_choices_equal_single_device(report, mesh):
    single, sharded = report["daemon"]["1x1"], report["daemon"][mesh]
    assert sharded["index"] == single["index"]
    assert sharded["tokens"] == single["tokens"]
    np.testing.assert_allclose(sharded["log_weights"], single["log_weights"], atol=1e-5)
    np.testing.assert_allclose(sharded["fit_mu"], single["fit_mu"], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.subprocess
def test_no_recompilation_across_calls(report):
    """A second call with other prompts (same bucket) and another seed traces and compiles nothing; the
    listener did hear the first call's compilations, so zero is a measurement."""
    counts = report["recompile"]
    assert counts["backend_compiles_seen"] > 0
    assert counts["traces_second_call"] == 0
    assert counts["backend_compiles_second_call"] == 0


@pytest.mark.slow
@pytest.mark.subprocess
def test_decode_loop_stays_on_device(report):
    """The jitted loop ran under ``jax.transfer_guard("disallow")``; its program is one ``while`` (after
    the state's sharding constraints) with no host callback anywhere inside."""
    loop = report["loop"]
    assert loop["guard_error"] is None
    assert loop["steps"] == 8
    assert loop["top_level"].count("while") == 1
    assert set(loop["top_level"]) == {"sharding_constraint", "while"}
    assert not [name for name in loop["primitives"] if "callback" in name]
    assert "sharding_constraint" in loop["primitives"]


@pytest.mark.slow
@pytest.mark.download
@pytest.mark.subprocess
def test_default_model_on_mesh_4x2(smollm2_gguf):
    """SmolLM2-135M (9 heads, 3 KV heads): attention replicated, MLP and vocabulary split; greedy tokens
    equal one device's."""
    real = run_check("--real")
    assert real["devices"] == 8
    assert real["sharded"] == real["single"]
    assert real["max_logp_diff"] < 1e-3
    assert real["specs"] == {"q_proj": [], "gate_proj": [None, None, "model"], "embed_tokens": ["model"]}


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_process_job_splits_prompts(report):
    """The multi-host recipe on one machine: two ``jax.distributed`` processes of 4 CPU devices each,
    each decoding its ``host_slice`` on a 2x2 mesh of its own devices; together they give the
    single-device greedy tokens, in order."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.sharding_check", "--host", str(i), str(port)],
            cwd=REPO,
            env=child_env(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [proc.communicate(timeout=600) for proc in procs]
    for proc, (_, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-4000:]
    hosts = [last_json(out) for out, _ in outs]
    assert [(h["process"], h["count"], h["global_devices"]) for h in hosts] == [(0, 2, 8), (1, 2, 8)]
    assert all(h["mesh"] == {"data": 2, "model": 2} for h in hosts)
    assert [len(h["tokens"]) for h in hosts] == [2, 1]
    assert hosts[0]["tokens"] + hosts[1]["tokens"] == report["greedy"]["1x1"]["tokens"]


# --- in-process: rules, flags, hosts ---------------------------------------------------------------


def specs_by_name(model, params, model_size: int) -> dict[str, P]:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {
        "/".join(str(k.key) for k in path): sharding.param_spec(
            "/".join(str(k.key) for k in path), np.shape(x), model.config, model_size
        )
        for path, x in leaves
    }


@functools.cache
def family(name) -> tuple[Any, Any]:
    return {"llama": lambda: tiny_llama(seed=0, **SHARDABLE), "gpt2": tiny_gpt2, "gemma3": tiny_gemma3}[name]()


def test_rules_llama_gpt2_gemma3():
    llama_specs = specs_by_name(*family("llama"), 4)
    assert llama_specs["layers_1/self_attn/v_proj/kernel"] == P(None, "model")
    assert llama_specs["layers_1/mlp/up_proj/kernel"] == P(None, "model")
    assert llama_specs["norm/scale"] == P()
    gpt2_specs = specs_by_name(*family("gpt2"), 4)
    assert gpt2_specs["layers_0/attn/q_proj/kernel"] == P(None, "model")
    assert gpt2_specs["layers_0/attn/q_proj/bias"] == P("model")
    assert gpt2_specs["layers_0/attn/o_proj/kernel"] == P("model", None)
    assert gpt2_specs["layers_0/attn/o_proj/bias"] == P()
    assert gpt2_specs["layers_0/mlp/c_fc/kernel"] == P(None, "model")
    assert gpt2_specs["layers_0/mlp/c_proj/kernel"] == P("model", None)
    assert gpt2_specs["wte/embedding"] == P("model", None)
    assert gpt2_specs["wpe/embedding"] == P()  # positions, not the vocabulary
    assert gpt2_specs["ln_f/scale"] == P()
    gemma_specs = specs_by_name(*family("gemma3"), 4)
    assert gemma_specs["layers_0/self_attn/k_proj/kernel"] == P(None, "model")
    assert gemma_specs["layers_0/self_attn/q_norm/scale"] == P()
    assert gemma_specs["layers_1/pre_feedforward_layernorm/scale"] == P()
    for specs in (llama_specs, gpt2_specs, gemma_specs):
        assert all(list(spec).count("model") <= 1 for spec in specs.values())


def smollm2_config(**kw):
    return llama.LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        head_dim=64,
        rms_norm_eps=1e-5,
        rope_theta=1e5,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        **kw,
    )


@pytest.mark.parametrize("size", [2, 4])
def test_rules_fall_back_when_heads_do_not_divide(size):
    """SmolLM2: 9 heads and 3 KV heads do not split 2 or 4 ways (replicated); MLP and vocab do."""
    c = smollm2_config()
    assert sharding.param_spec("layers_0/self_attn/q_proj/kernel", (576, 576), c, size) == P()
    assert sharding.param_spec("layers_0/self_attn/k_proj/kernel", (576, 192), c, size) == P()
    assert sharding.param_spec("layers_0/self_attn/o_proj/kernel", (576, 576), c, size) == P()
    assert sharding.param_spec("layers_0/mlp/gate_proj/kernel", (576, 1536), c, size) == P(None, "model")
    assert sharding.param_spec("layers_0/mlp/down_proj/kernel", (1536, 576), c, size) == P("model", None)
    assert sharding.param_spec("embed_tokens/embedding", (49152, 576), c, size) == P("model", None)
    # Scanned layers: the stacked leading layer axis stays whole.
    assert sharding.param_spec("layers/block/mlp/up_proj/kernel", (30, 576, 1536), c, size) == P(None, None, "model")


def test_rules_split_heads_when_they_divide():
    c = smollm2_config()
    assert sharding.param_spec("layers_0/self_attn/q_proj/kernel", (576, 576), c, 3) == P(None, "model")
    assert sharding.param_spec("layers_0/self_attn/k_proj/kernel", (576, 192), c, 3) == P(None, "model")
    assert sharding.param_spec("layers_0/self_attn/k_proj/kernel", (576, 192), c, 9) == P()  # 3 KV heads
    assert sharding.param_spec("layers_0/self_attn/q_proj/kernel", (576, 576), c, 1) == P()


@pytest.mark.slow
def test_single_device_mesh_gives_single_device_tokens():
    model, params = family("llama")
    mesh = sharding.make_mesh()
    assert dict(mesh.shape) == {"data": 1, "model": 1}
    kwargs: dict[str, Any] = dict(max_new_tokens=4, chunk=4, num_samples=2)
    policy = infodec.chain(infodec.Temperature(0.8), infodec.TopP(0.9))
    plain = infodec.generate(model, params, [[1, 2, 3], [4, 5]], policy, jax.random.key(0), **kwargs)
    meshed = infodec.generate(model, params, [[1, 2, 3], [4, 5]], policy, jax.random.key(0), mesh=mesh, **kwargs)
    np.testing.assert_array_equal(meshed.tokens, plain.tokens)


def test_parse_mesh():
    assert sharding.parse_mesh("") is None
    assert sharding.parse_mesh("  ") is None
    assert sharding.parse_mesh("data:4,model:2") == {"data": 4, "model": 2}
    assert sharding.parse_mesh("model:2, data:4") == {"data": 4, "model": 2}
    assert sharding.parse_mesh("model:2") == {"data": None, "model": 2}
    assert sharding.parse_mesh("data:8") == {"data": 8, "model": 1}


@pytest.mark.parametrize(
    "spec,message",
    [
        ("data=4", "AXIS:SIZE"),
        ("data:4,", "AXIS:SIZE"),
        ("data:", "AXIS:SIZE"),
        (":4", "AXIS:SIZE"),
        ("rows:4", "unknown axis 'rows'"),
        ("data:2,data:4", "given twice"),
        ("data:0", "integer >= 1"),
        ("model:-2", "integer >= 1"),
        ("data:two", "integer >= 1"),
        ("data:1.5", "integer >= 1"),
    ],
)
def test_parse_mesh_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        sharding.parse_mesh(spec)


def test_make_mesh_errors():
    with pytest.raises(ValueError, match="needs 2 devices, but 1 are available"):
        sharding.make_mesh(data=2)
    with pytest.raises(ValueError, match="model axis of 2 does not divide the 1 available devices"):
        sharding.make_mesh(model=2)
    with pytest.raises(ValueError, match="integer >= 1"):
        sharding.make_mesh(data=0)


def test_mesh_needs_data_and_model_axes():
    model, params = family("llama")
    wrong = jax.sharding.Mesh(np.array(jax.devices()), ("x",))
    with pytest.raises(ValueError, match=r"lack \['data', 'model'\]"):
        infodec.generate(model, params, [[1, 2]], infodec.Greedy(), jax.random.key(0), max_new_tokens=2, mesh=wrong)
    with pytest.raises(ValueError, match="must be a jax.sharding.Mesh"):
        sharding.shard_params(model, params, "data:1")  # pyright: ignore[reportArgumentType] (the wrong type on purpose)
    assert dict(sharding.make_mesh(devices=np.array(jax.devices())).shape) == {"data": 1, "model": 1}


def test_host_slice():
    items = list(range(10))
    shares = [sharding.host_slice(items, i, 3) for i in range(3)]
    assert shares == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert sum(shares, []) == items
    assert [sharding.host_slice(items[:2], i, 3) for i in range(3)] == [[0], [1], []]
    assert sharding.host_slice(items) == items  # this test runs as the only process
    with pytest.raises(ValueError, match="process_index"):
        sharding.host_slice(items, 3, 3)
    with pytest.raises(ValueError, match="process_count"):
        sharding.host_slice(items, 0, 0)


def test_initialize_distributed_single_process_is_a_no_op():
    assert sharding.initialize_distributed(num_processes=1) == (0, 1)
