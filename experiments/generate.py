r"""Generate continuations of a prompt with any infodec policy.

    python -m experiments.generate --prompt="The capital of France is" --policy=top_p --top_p=0.9 \
        --temperature=0.8 --num_samples=3 --seed=0
    python -m experiments.generate --mesh=data:4,model:2    # 8 devices: rows x 4, tensor-parallel x 2

Multi-host (README "Scale-out"): run the same command on every host with ``--distributed`` (plus
``--coordinator``, ``--num_processes`` and ``--process_id`` where the cluster is not auto-detected); each
process decodes its ``sharding.host_slice`` of the prompts on a mesh of its own devices.
"""

import time
from typing import cast

import jax
from absl import app, flags

import infodec
from infodec import compilation, sharding
from infodec.policies import named

_MODEL = flags.DEFINE_string("model", "smollm2-135m", "Registry name, HF directory, .gguf file or hub id.")
_PROMPT = flags.DEFINE_multi_string(
    "prompt", ["The history of the printing press begins"], "Prompt text (repeat the flag for a batch)."
)
_POLICY = flags.DEFINE_enum("policy", "top_p", named.NAMES, "Decoding policy.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "Temperature (0 = greedy), applied before truncation.")
_TOP_K = flags.DEFINE_integer("top_k", 50, "k for --policy=top_k.")
_TOP_P = flags.DEFINE_float("top_p", 0.9, "p for --policy=top_p.")
_MIN_P = flags.DEFINE_float("min_p", 0.05, "p for --policy=min_p.")
_TYPICAL_P = flags.DEFINE_float("typical_p", 0.9, "mass for --policy=typical.")
_EPSILON = flags.DEFINE_float("epsilon", 3e-4, "cut-off for --policy=epsilon.")
_ETA = flags.DEFINE_float("eta", 3e-4, "cut-off for --policy=eta.")
_REPETITION_PENALTY = flags.DEFINE_float("repetition_penalty", 1.0, "CTRL repetition penalty (1 = off).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 3, "Continuations per prompt.", lower_bound=1)
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 48, "Tokens to generate.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")
_DISTRIBUTED = flags.DEFINE_boolean(
    "distributed", False, "Join a multi-process job (jax.distributed) and decode this process's share of the prompts."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator", "", "With --distributed: 'host:port' of process 0 (empty = auto-detect, e.g. TPU pods, SLURM)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --distributed: processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --distributed: this process's id.")
_MESH = flags.DEFINE_string(
    "mesh",
    "",
    "Device mesh 'data:N,model:M' (an axis left out: data takes the remaining "
    "devices, model 1); empty = one device. See infodec.sharding.",
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    prompts, first, index = _PROMPT.value, 0, 0
    if _DISTRIBUTED.value:  # before anything touches a device
        index, count = sharding.initialize_distributed(
            _COORDINATOR.value or None, _NUM_PROCESSES.value, _PROCESS_ID.value
        )
        mine = sharding.host_slice(list(range(len(prompts))), index, count)
        prompts, first = [prompts[i] for i in mine], (mine[0] if mine else 0)
        print(f"process {index} of {count}: prompts {mine}")
        if not prompts:
            return
    key = jax.random.fold_in(jax.random.key(_SEED.value), index) if index else jax.random.key(_SEED.value)
    policy = named.build(
        _POLICY.value,
        temperature=_TEMPERATURE.value,
        top_k=_TOP_K.value,
        top_p=_TOP_P.value,
        min_p=_MIN_P.value,
        typical_p=_TYPICAL_P.value,
        epsilon=_EPSILON.value,
        eta=_ETA.value,
        repetition_penalty=_REPETITION_PENALTY.value,
    )
    mesh_spec = sharding.parse_mesh(_MESH.value)
    infodec.enable_compilation_cache()
    model, params, tokenizer = infodec.load(_MODEL.value)
    mesh = None
    if mesh_spec is not None:
        # parse_mesh's dict is typed int | None throughout, but it always sets model (default 1)
        mesh = sharding.make_mesh(data=mesh_spec["data"], model=cast(int, mesh_spec["model"]))
        params = sharding.shard_params(model, params, mesh)
        print(f"mesh {dict(mesh.shape)} over {mesh.devices.size} {jax.default_backend()} devices")
    start = time.perf_counter()
    with compilation.compile_time() as compiling:
        out = infodec.generate(
            model,
            params,
            prompts,
            policy,
            key,
            max_new_tokens=_MAX_NEW_TOKENS.value,
            tokenizer=tokenizer,
            num_samples=_NUM_SAMPLES.value,
            mesh=mesh,
        )
    seconds = time.perf_counter() - start
    assert out.text is not None  # string prompts: generate had the tokenizer, so it decoded the text
    for row, text in enumerate(out.text):
        prompt = prompts[row // _NUM_SAMPLES.value]
        entropy = out.diagnostics["entropy"][row, : out.lengths[row]].mean()
        print(
            f"--- prompt {first + row // _NUM_SAMPLES.value}, sample {row % _NUM_SAMPLES.value} "
            f"({out.lengths[row]} tokens, mean entropy {entropy:.2f} nats)\n{prompt}{text}\n"
        )
    print(f"{int(out.lengths.sum())} tokens in {seconds:.1f} s, the first call: {compiling}")


if __name__ == "__main__":
    app.run(main)
