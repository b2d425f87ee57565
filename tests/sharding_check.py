"""Multi-device measurements for tests/test_sharding.py, run in a child process with 8 CPU devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.sharding_check [--real]

The pytest process has already initialised jax with one device, so the tests run this as a module in a
subprocess and parse the one JSON object it prints last. It measures and reports; the comparisons
(mesh == single device, the intended specs, no recompilation, no transfers) are asserted by the tests.
``--real`` runs the default model (SmolLM2-135M) on the (4, 2) mesh instead of the tiny models.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import infodec
from infodec import daemon, sharding
from infodec.decoding import engine
from tests.tiny_models import SHARDABLE, tiny_gemma3, tiny_gpt2, tiny_llama

MESHES = ((8, 1), (4, 2), (2, 4))
# Three prompts of different lengths (one bucket): 3 rows (x 2 samples = 6) never split 8 or 4 ways
# evenly, so the padding rows are exercised on every mesh but (2, 4) with samples.
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15]]
OTHER_PROMPTS = [[20, 21], [3, 1, 4, 1, 5, 9, 2, 6], [7, 7, 7]]
NEW_TOKENS = 8


def sampled_policy():
    return infodec.chain(infodec.Temperature(0.8), infodec.TopP(0.9))


def spec(x) -> list:
    """A leaf's ``PartitionSpec`` as JSON (axis names or None per dimension, trailing Nones dropped, as
    jax drops them from the shardings it infers)."""
    entries = [None if s is None else (list(s) if isinstance(s, tuple) else s) for s in x.sharding.spec]
    while entries and entries[-1] is None:
        entries.pop()
    return entries


def decode(model, params, policy, mesh=None, prompts=PROMPTS, seed=0, **kwargs) -> dict:
    out = infodec.generate(
        model, params, prompts, policy, jax.random.key(seed), max_new_tokens=NEW_TOKENS, chunk=4, mesh=mesh, **kwargs
    )
    return {"tokens": out.tokens.tolist(), "lengths": out.lengths.tolist(), "logp_model": out.logp_model.tolist()}


def tiny_results() -> dict:
    model, params = tiny_llama(seed=3, scale=1.5, **SHARDABLE)
    results = {
        "devices": len(jax.devices()),
        "greedy": {},
        "sampled": {},
        "daemon": {},
        "families": {},
        "param_specs": {},
        "state_specs": {},
    }
    results["recompile"] = recompilation(model, params)  # first: its first call compiles
    daemon_args: dict[str, Any] = dict(
        mu=np.array([2.0, -1.0]),
        metric_names=["sr2", "div"],
        num_candidates=4,
        max_new_tokens=NEW_TOKENS,
        key=jax.random.key(7),
        stop_tokens=(),
    )

    def run_daemon(mesh, name):
        out = daemon.sample(
            model,
            params if mesh is None else sharding.shard_params(model, params, mesh),
            PROMPTS[:2],
            mesh=mesh,
            **daemon_args,
        )
        mu, _ = daemon.fit(
            model,
            params,
            PROMPTS[:2],
            [[1, 2, 1, 2], [5, 6, 7]],
            ["sr2", "div"],
            num_samples=4,
            max_new_tokens=NEW_TOKENS,
            key=jax.random.key(8),
            stop_tokens=(),
            mesh=mesh,
        )
        results["daemon"][name] = {
            "index": out.index.tolist(),
            "tokens": out.tokens.tolist(),
            "log_weights": out.log_weights.tolist(),
            "fit_mu": mu.tolist(),
        }

    results["greedy"]["1x1"] = decode(model, params, infodec.Greedy())
    results["sampled"]["1x1"] = decode(model, params, sampled_policy(), num_samples=2)
    run_daemon(None, "1x1")
    for family, build in (("gpt2", tiny_gpt2), ("gemma3", tiny_gemma3)):
        fam_model, fam_params = build(seed=4)
        results["families"][family] = {
            "1x1": decode(fam_model, fam_params, infodec.Greedy()),
            "2x4": decode(fam_model, fam_params, infodec.Greedy(), mesh=sharding.make_mesh(2, 4)),
        }
    for data, width in MESHES:
        name = f"{data}x{width}"
        mesh = sharding.make_mesh(data, width)
        placed = sharding.shard_params(model, params, mesh)
        layer = placed["layers_0"]
        results["param_specs"][name] = {
            "q_proj": spec(layer["self_attn"]["q_proj"]["kernel"]),
            "k_proj": spec(layer["self_attn"]["k_proj"]["kernel"]),
            "o_proj": spec(layer["self_attn"]["o_proj"]["kernel"]),
            "gate_proj": spec(layer["mlp"]["gate_proj"]["kernel"]),
            "down_proj": spec(layer["mlp"]["down_proj"]["kernel"]),
            "embed_tokens": spec(placed["embed_tokens"]["embedding"]),
            "lm_head": spec(placed["lm_head"]["kernel"]),
            "input_layernorm": spec(layer["input_layernorm"]["scale"]),
        }
        results["greedy"][name] = decode(model, placed, infodec.Greedy(), mesh)
        results["sampled"][name] = decode(model, placed, sampled_policy(), mesh, num_samples=2)
        # The state as the jitted loop leaves it: one generate's worth, kept on device.
        policy = engine.canonical_policy(sampled_policy())
        state = engine.prefill(
            model,
            placed,
            PROMPTS,
            jax.random.key(0),
            max_new_tokens=NEW_TOKENS,
            num_samples=2,
            policy=policy,
            stop_tokens=(),
            mesh=mesh,
            chunk=4,
        )
        state = engine._decode_loop(model, placed, policy, state, chunk=4, structure=engine.policy_structure(policy))
        results["state_specs"][name] = {
            "rows": int(state.tokens.shape[0]),
            "cache_k": spec(state.cache.k),
            "cache_positions": spec(state.cache.positions),
            "tokens": spec(state.tokens),
            "logits": spec(state.logits),
            "done": spec(state.done),
        }
    # Two-stream (evidence) rows, per-row policy fields (padded with the rows) and stream().
    evidence = [[30, 31], [29], [28, 27, 26]]
    cfg = infodec.ClassifierFreeGuidance(1.5)
    per_row = infodec.Temperature(np.array([0.5, 1.0, 1.5], np.float32))
    results["more"] = {
        "two_stream": [
            decode(model, params, cfg, evidence=evidence)["tokens"],
            decode(model, params, cfg, sharding.make_mesh(4, 2), evidence=evidence)["tokens"],
        ],
        "per_row": [
            decode(model, params, per_row)["tokens"],
            decode(model, params, per_row, sharding.make_mesh(8, 1))["tokens"],
        ],
        "stream": [
            decode(model, params, sampled_policy())["tokens"],
            np.concatenate(
                list(
                    infodec.stream(
                        model,
                        params,
                        PROMPTS,
                        sampled_policy(),
                        jax.random.key(0),
                        max_new_tokens=NEW_TOKENS,
                        chunk=4,
                        mesh=sharding.make_mesh(2, 4),
                    )
                ),
                axis=1,
            ).tolist(),
        ],
        "user_loop": [
            decode(model, params, cfg, evidence=evidence, num_samples=2)["tokens"],
            user_loop(model, params, cfg, sharding.make_mesh(4, 2), evidence=evidence, num_samples=2),
        ],
    }
    results["teacher_force"] = teacher_forced(model, params, cfg, sharding.make_mesh(4, 2), evidence=evidence)
    run_daemon(sharding.make_mesh(4, 2), "4x2")
    run_daemon(sharding.make_mesh(8, 1), "8x1")
    results["loop"] = loop_on_device(model, params)
    return results


def user_loop(model, params, policy, mesh, **kwargs) -> list:
    """A hand-written prefill -> step x n -> finish on ``mesh`` (``select`` reverses and restores the rows)."""
    placed = sharding.shard_params(model, params, mesh)
    state = engine.prefill(
        model, placed, PROMPTS, jax.random.key(0), max_new_tokens=NEW_TOKENS, policy=policy, mesh=mesh, **kwargs
    )
    backwards = np.arange(state.num_rows)[::-1]
    for t in range(NEW_TOKENS):
        state = engine.step(model, placed, policy, state)
        if t == 2:
            state = engine.select(engine.select(state, backwards), backwards)
    return engine.finish(state).tokens.tolist()


def teacher_forced(model, params, policy, mesh, **kwargs) -> dict:
    """log π that ``generate`` records for its own tokens on one device, and what ``teacher_force`` gives
    for the same tokens on ``mesh`` (3 prompts: the state has a padding row, fed ``pad_id``)."""
    out = infodec.generate(
        model, params, PROMPTS, policy, jax.random.key(0), max_new_tokens=NEW_TOKENS, stop_tokens=(), **kwargs
    )
    placed = sharding.shard_params(model, params, mesh)
    state = engine.prefill(
        model,
        placed,
        PROMPTS,
        jax.random.key(1),
        max_new_tokens=NEW_TOKENS,
        policy=policy,
        stop_tokens=(),
        mesh=mesh,
        **kwargs,
    )
    tokens = np.full((state.num_rows, NEW_TOKENS), state.pad_id, np.int32)
    tokens[: len(out.tokens)] = out.tokens
    forced = engine.finish(engine.teacher_force(model, placed, policy, state, tokens))
    return {
        "rows": state.num_rows,
        "generated": out.logp_policy.tolist(),
        "forced": forced.logp_policy.tolist(),
        "model": [out.logp_model.tolist(), forced.logp_model.tolist()],
    }


def recompilation(model, params) -> dict:
    """Engine traces and XLA backend compilations during a second call (other prompts, other seed)."""
    mesh = sharding.make_mesh(4, 2)
    placed = sharding.shard_params(model, params, mesh)
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration_secs, **kw: (
            compiles.append(event) if event == "/jax/core/compile/backend_compile_duration" else None
        )
    )
    decode(model, placed, sampled_policy(), mesh, num_samples=2, seed=1)
    before, first_compiles = engine.compile_count(), len(compiles)
    decode(model, placed, sampled_policy(), mesh, prompts=OTHER_PROMPTS, num_samples=2, seed=2)
    return {
        "traces_second_call": engine.compile_count() - before,
        "backend_compiles_second_call": len(compiles) - first_compiles,
        "backend_compiles_seen": first_compiles,
    }


def loop_on_device(model, params) -> dict:
    """Runs the jitted decode loop under ``jax.transfer_guard("disallow")`` (no host<->device or
    device<->device transfer may happen inside the call) and lists the primitives of its jaxpr."""
    mesh = sharding.make_mesh(4, 2)
    placed = sharding.shard_params(model, params, mesh)
    replicated = NamedSharding(mesh, P())
    policy = jax.device_put(engine.canonical_policy(sampled_policy()), replicated)
    loop_options = {"chunk": 4, "structure": engine.policy_structure(policy)}

    def args(state):
        return model, placed, policy, state

    def start():
        return engine.prefill(
            model,
            placed,
            PROMPTS,
            jax.random.key(3),
            max_new_tokens=NEW_TOKENS,
            num_samples=2,
            policy=policy,
            stop_tokens=(),
            mesh=mesh,
            chunk=4,
        )

    state = start()
    jax.block_until_ready(state)
    error = None
    try:
        with jax.transfer_guard("disallow"):
            state = jax.block_until_ready(engine._decode_loop(*args(state), **loop_options))
    except Exception as e:  # reported, asserted by the test
        error = f"{type(e).__name__}: {e}"[:500]
    steps = int(state.step)
    # The loop's program: the top level of the jitted function's jaxpr, and every primitive inside it.
    state = start()
    jaxpr = engine._decode_loop.trace(*args(state), **loop_options).jaxpr.jaxpr
    top = [eqn.primitive.name for eqn in jaxpr.eqns]
    return {"guard_error": error, "steps": steps, "top_level": top, "primitives": sorted(primitives(jaxpr))}


def primitives(jaxpr) -> set[str]:
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for sub in _subjaxprs(eqn):
            names |= primitives(sub)
    return names


def _subjaxprs(eqn):
    """The jaxprs inside an equation's parameters (while/scan/cond bodies, nested jits)."""
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr


def real_results() -> dict:
    """Greedy on SmolLM2-135M: one device vs the (4, 2) mesh (9 heads / 3 KV heads: attention replicated,
    MLP and vocabulary split). Scanned layers (stacked parameters, a leading layer axis) compile in a
    third of the time of unrolled ones."""
    start = time.perf_counter()
    model, params, tokenizer = infodec.load("smollm2-135m", scan_layers=True)
    prompts = ["The history of the printing press begins", "Water boils at", "My favourite poem is"]
    kwargs: dict[str, Any] = dict(max_new_tokens=12, tokenizer=tokenizer, stop_tokens=())
    single = infodec.generate(model, params, prompts, infodec.Greedy(), jax.random.key(0), **kwargs)
    mesh = sharding.make_mesh(4, 2)
    placed = sharding.shard_params(model, params, mesh)
    sharded = infodec.generate(model, placed, prompts, infodec.Greedy(), jax.random.key(0), mesh=mesh, **kwargs)
    layer = placed["layers"]["block"]
    return {
        "devices": len(jax.devices()),
        "single": single.tokens.tolist(),
        "sharded": sharded.tokens.tolist(),
        "max_logp_diff": float(np.max(np.abs(single.logp_model - sharded.logp_model))),
        "specs": {
            "q_proj": spec(layer["self_attn"]["q_proj"]["kernel"]),
            "gate_proj": spec(layer["mlp"]["gate_proj"]["kernel"]),
            "embed_tokens": spec(placed["embed_tokens"]["embedding"]),
        },
        "seconds": time.perf_counter() - start,
    }


def host_results(index: int, port: int) -> dict:
    """One of two processes of a ``jax.distributed`` job on this machine (the multi-host recipe): greedy
    on this process's ``host_slice`` of the prompts, on a 2x2 mesh of its own 4 devices."""
    process, count = sharding.initialize_distributed(f"localhost:{port}", num_processes=2, process_id=index)
    model, params = tiny_llama(seed=3, scale=1.5, **SHARDABLE)
    mesh = sharding.make_mesh(model=2)
    mine = sharding.host_slice(PROMPTS)
    return {
        "process": process,
        "count": count,
        "global_devices": len(jax.devices()),
        "mesh": dict(mesh.shape),
        "tokens": decode(model, params, infodec.Greedy(), mesh, prompts=mine)["tokens"],
    }


if __name__ == "__main__":
    if "--host" in sys.argv:  # --host I PORT
        at = sys.argv.index("--host")
        print(json.dumps(host_results(int(sys.argv[at + 1]), int(sys.argv[at + 2]))))
        sys.exit(0)
    if len(jax.devices()) != 8:
        sys.exit(f"expected 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8), got {len(jax.devices())}")
    print(json.dumps(real_results() if "--real" in sys.argv else tiny_results()))
