"""bfloat16 end to end: infodec in bf16 is no further from HF float32 than HF's own bf16 is.

For every architecture, a tiny random HF checkpoint is run by HF in float32 (the reference), by HF in
bfloat16, and by infodec loaded with ``dtype=bfloat16``. The error of each bf16 run is the mean, over
positions, of KL(p_float32 || p_bf16). infodec keeps norms' statistics, RoPE, the attention softmax and
the logits in float32, so its error must be at most 1.5 x HF-bf16's (the criterion of the issue that
asked for bf16, fixed before these tests were run).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import infodec

PROMPT_TOKENS = np.random.RandomState(0).randint(3, 250, (4, 32))
RATIO = 1.5

BASE: dict[str, Any] = dict(
    vocab_size=256,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=128,
    initializer_range=0.1,  # larger than HF's 0.02, so the logits are far from uniform
)


def _hf(family: str):
    import transformers as t

    if family == "llama":
        return t.LlamaForCausalLM(t.LlamaConfig(**BASE, num_key_value_heads=2, tie_word_embeddings=False))
    if family == "llama3-scaled":
        rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
        rope |= {"original_max_position_embeddings": 16, "rope_theta": 500000.0}
        return t.LlamaForCausalLM(t.LlamaConfig(**BASE, num_key_value_heads=2, rope_parameters=rope))
    if family == "mistral":
        return t.MistralForCausalLM(t.MistralConfig(**BASE, num_key_value_heads=2, sliding_window=None))
    if family == "qwen2":
        return t.Qwen2ForCausalLM(t.Qwen2Config(**BASE, num_key_value_heads=2, tie_word_embeddings=True))
    if family == "gemma3":
        config = t.Gemma3TextConfig(**BASE, num_key_value_heads=2, head_dim=32, sliding_window=8)
        config.layer_types = ["sliding_attention", "sliding_attention", "full_attention"]
        return t.Gemma3ForCausalLM(config)
    if family == "gpt2":
        config = t.GPT2Config(vocab_size=256, n_embd=128, n_layer=3, n_head=4, n_positions=128, initializer_range=0.1)
        config.bos_token_id = config.eos_token_id = 0
        return t.GPT2LMHeadModel(config)
    raise ValueError(family)


def _mean_kl(reference: np.ndarray, other: np.ndarray) -> float:
    p = jax.nn.log_softmax(jnp.asarray(reference, jnp.float64 if jax.config.x64_enabled else jnp.float32), -1)  # pyright: ignore[reportAttributeAccessIssue] (JAX adds it by setattr)
    q = jax.nn.log_softmax(jnp.asarray(other, p.dtype), -1)
    return float(jnp.mean(jnp.sum(jnp.exp(p) * (p - q), -1)))


@pytest.mark.parametrize("family", ["llama", "llama3-scaled", "mistral", "qwen2", "gemma3", "gpt2"])
def test_infodec_bf16_error_is_at_most_1_5x_hf_bf16_error(tmp_path, family):
    torch.manual_seed(0)
    hf = _hf(family).eval()
    hf.save_pretrained(tmp_path)
    ids = torch.tensor(PROMPT_TOKENS, dtype=torch.long)
    with torch.no_grad():
        reference = hf(ids).logits.double().numpy()
        hf_bf16 = hf.to(torch.bfloat16)(ids).logits.float().numpy()  # pyright: ignore[reportArgumentType] (transformers' @wraps'd .to)
    model, params, _ = infodec.load(tmp_path, dtype=jnp.bfloat16)
    assert model.dtype == jnp.bfloat16
    positions = np.broadcast_to(np.arange(PROMPT_TOKENS.shape[1]), PROMPT_TOKENS.shape)
    ours, _ = jax.jit(model.apply)(params, PROMPT_TOKENS, positions)
    assert ours.dtype == jnp.float32
    hf_error, our_error = _mean_kl(reference, hf_bf16), _mean_kl(reference, np.asarray(ours))
    print(f"{family}: mean KL to HF float32 per position: HF bf16 {hf_error:.3e}, infodec bf16 {our_error:.3e}")
    assert hf_error > 1e-7  # bf16 really perturbs this model: the comparison is not between two zeros
    assert our_error <= RATIO * hf_error


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_bf16_cached_decoding_equals_its_own_full_forward(tmp_path, family):
    """The bf16 KV cache gives the logits of the cache-free bf16 forward pass (within bf16 noise): the
    cache is written and read in the model dtype, never through a float32 detour that changes results."""
    torch.manual_seed(0)
    _hf(family).save_pretrained(tmp_path)
    model, params, _ = infodec.load(tmp_path, dtype=jnp.bfloat16)
    tokens = PROMPT_TOKENS[:2, :12]
    positions = np.broadcast_to(np.arange(12), tokens.shape)
    full, _ = model.apply(params, tokens, positions)
    cache = model.init_cache(2, 16)
    _, cache = model.apply(params, tokens[:, :8], positions[:, :8], cache)
    steps = []
    for t in range(8, 12):
        logits, cache = model.apply(params, tokens[:, t : t + 1], positions[:, t : t + 1], cache)
        steps.append(logits[:, 0])
    assert cache.k.dtype == jnp.bfloat16
    assert _mean_kl(np.asarray(full[:, 8:]), np.stack(steps, 1)) < 1e-3


@pytest.mark.download
def test_real_smollm2_bf16_error_is_at_most_1_5x_hf_bf16_error(smollm2_gguf, capsys):
    """The same criterion on the real SmolLM2-135M-Instruct, teacher-forced along its float32 greedy
    continuations of four prompts (64 tokens each): HF float32 (its own GGUF loader) is the reference.

    This replaced a criterion on free-running greedy text (bf16 follows float32 for >= 48 of 64 leading
    tokens on average), which measured the host's bf16 arithmetic rather than infodec: 64, 64, 64, 64 and
    64, 64, 64, 16 on CPUs where XLA keeps excess precision between bf16 ops, 64, 64, 39, 16 with
    ``--xla_allow_excess_precision=false``, 23, 64, 39, 16 on a CI machine. One near-tie flips a token
    and the rest of the text differs; teacher forcing measures every position instead."""
    from transformers import AutoModelForCausalLM

    prompts = [
        "The history of the printing press begins",
        "The capital of France is",
        "Photosynthesis is the process by which",
        "Once upon a time, in a small village,",
    ]
    model, params, tokenizer = infodec.load("smollm2-135m")
    greedy = infodec.generate(
        model,
        params,
        prompts,
        infodec.Greedy(),
        jax.random.key(0),
        max_new_tokens=64,
        tokenizer=tokenizer,
        stop_tokens=(),
    )
    assert tokenizer is not None
    texts = [tokenizer.encode(p) + [int(t) for t in row] for p, row in zip(prompts, greedy.tokens)]
    model, params, _ = infodec.load("smollm2-135m", dtype=jnp.bfloat16)
    forward = jax.jit(model.apply)
    hf = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32)
    hf.eval()
    reference, hf_bf16, ours = [], [], []
    for ids in texts:
        scored = slice(len(ids) - 65, len(ids) - 1)  # the logits that predict the 64 continuation tokens
        with torch.no_grad():
            reference.append(hf(torch.tensor([ids])).logits[0, scored].double().numpy())
            hf_bf16.append(hf.to(torch.bfloat16)(torch.tensor([ids])).logits[0, scored].double().numpy())  # pyright: ignore[reportArgumentType] (transformers' @wraps'd .to)
        hf.to(torch.float32)  # pyright: ignore[reportArgumentType] (transformers' @wraps'd .to)
        logits, _ = forward(params, np.asarray([ids]), np.arange(len(ids))[None])
        ours.append(np.asarray(logits[0, scored]))
    reference, hf_bf16, ours = (np.concatenate(x) for x in (reference, hf_bf16, ours))
    hf_error, our_error = _mean_kl(reference, hf_bf16), _mean_kl(reference, ours)
    agree = [float(np.mean(reference.argmax(-1) == x.argmax(-1))) for x in (hf_bf16, ours)]
    with capsys.disabled():
        print(
            f"\nSmolLM2-135M bf16, 256 teacher-forced positions: mean KL to HF float32 HF {hf_error:.2e}, "
            f"infodec {our_error:.2e}; same top token HF {agree[0]:.3f}, infodec {agree[1]:.3f}"
        )
    assert hf_error > 1e-5  # the real model is perturbed by bf16: the ratio compares two real errors
    assert our_error <= RATIO * hf_error
