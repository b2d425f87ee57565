"""One parity harness for every model family: infodec against HF transformers on a tiny random checkpoint.

A family's test builds a tiny HF model from the family's own config class and calls :func:`check_family`.
It saves the model with ``save_pretrained`` twice (sharded float32, and bfloat16), loads both with
``infodec.load`` and checks, against HF (PyTorch) on the same weights:

* float32 logits within ``1e-4`` on random prompts;
* left padding: each row of a left-padded batch (pad positions ``-1``) gives the logits of its unpadded
  HF run at its real positions;
* the KV cache: a prefill then single-token steps give the full-sequence logits;
* greedy generation of 32 tokens identical to HF ``generate`` (EOS suppressed on both sides);
* bfloat16: mean KL(HF float32 ‖ infodec bf16) per position at most 1.5 × that of HF's own bf16 run.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

import infodec

TOLERANCE = 1e-4
BF16_RATIO = 1.5
GREEDY_TOKENS = 32


def hf_logits(hf_model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return hf_model(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.double().numpy()


def mean_kl(reference: np.ndarray, other: np.ndarray) -> float:
    p = torch.log_softmax(torch.tensor(reference, dtype=torch.float64), -1)
    q = torch.log_softmax(torch.tensor(np.asarray(other), dtype=torch.float64), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def save(hf_model, directory: Path) -> tuple[Path, Path]:
    """The model saved sharded in float32 (``f32/``, with an index) and in bfloat16 (``bf16/``)."""
    f32, bf16 = directory / "f32", directory / "bf16"
    hf_model.save_pretrained(f32, max_shard_size="200KB")
    copy.deepcopy(hf_model).to(torch.bfloat16).save_pretrained(bf16)  # a copy: rounding must not reach the reference
    return f32, bf16


def check_logits(hf_model, model, params, vocab: int, seed: int = 0) -> float:
    tokens = np.random.RandomState(seed).randint(0, vocab, (3, 11))
    positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
    ours = np.asarray(model.apply(params, tokens, positions)[0])
    error = float(np.abs(ours - hf_logits(hf_model, tokens)).max())
    assert error < TOLERANCE, f"float32 logits differ from HF by {error:.2e}"
    return error


def check_left_padding(hf_model, model, params, vocab: int, seed: int = 1) -> float:
    rng = np.random.RandomState(seed)
    lengths = [9, 5, 2]
    width = max(lengths)
    tokens = rng.randint(0, vocab, (len(lengths), width))  # pad slots hold arbitrary ids: they must not matter
    positions = np.stack([np.concatenate([np.full(width - n, -1), np.arange(n)]) for n in lengths])
    ours = np.asarray(model.apply(params, tokens, positions)[0])
    worst = 0.0
    for row, n in enumerate(lengths):
        theirs = hf_logits(hf_model, tokens[row : row + 1, width - n :])[0]
        worst = max(worst, float(np.abs(ours[row, width - n :] - theirs).max()))
    assert worst < TOLERANCE, f"left-padded rows differ from their unpadded HF runs by {worst:.2e}"
    return worst


def check_cache(model, params, vocab: int, seed: int = 2) -> float:
    tokens = np.random.RandomState(seed).randint(0, vocab, (2, 10))
    positions = np.broadcast_to(np.arange(10), tokens.shape)
    full = np.asarray(model.apply(params, tokens, positions)[0])
    cache = model.init_cache(2, 12)
    logits, cache = model.apply(params, tokens[:, :6], positions[:, :6], cache)
    steps = [np.asarray(logits)]
    for t in range(6, 10):
        logits, cache = model.apply(params, tokens[:, t : t + 1], positions[:, t : t + 1], cache)
        steps.append(np.asarray(logits))
    error = float(np.abs(np.concatenate(steps, 1) - full).max())
    assert error < TOLERANCE, f"cached incremental logits differ from the full sequence by {error:.2e}"
    return error


def check_greedy(hf_model, model, params, vocab: int, seed: int = 3) -> None:
    prompt = np.random.RandomState(seed).randint(0, vocab, 7).tolist()
    out = infodec.generate(
        model, params, [prompt], infodec.Greedy(), jax.random.key(0), max_new_tokens=GREEDY_TOKENS, stop_tokens=()
    )
    ids = torch.tensor([prompt])
    # No EOS on HF's side either: neither stopping on it nor min_new_tokens' suppression of it.
    reference = copy.deepcopy(hf_model)
    reference.config.eos_token_id = reference.generation_config.eos_token_id = None
    with torch.no_grad():
        hf = reference.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=GREEDY_TOKENS, do_sample=False, pad_token_id=0
        )
    theirs = hf[0, len(prompt) :].tolist()
    assert out.tokens[0].tolist() == theirs, f"greedy differs from HF generate:\n{out.tokens[0].tolist()}\n{theirs}"


def check_bf16(hf_model, bf16_dir: Path, vocab: int, seed: int = 4) -> tuple[float, float]:
    tokens = np.random.RandomState(seed).randint(0, vocab, (4, 24))
    reference = hf_logits(hf_model, tokens)
    hf_bf16 = hf_logits(copy.deepcopy(hf_model).to(torch.bfloat16), tokens)
    model, params, _ = infodec.load(bf16_dir, dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    ours = np.asarray(model.apply(params, tokens, np.broadcast_to(np.arange(24), tokens.shape))[0])
    hf_error, our_error = mean_kl(reference, hf_bf16), mean_kl(reference, ours)
    assert hf_error > 1e-8, "bf16 does not perturb this model: the comparison would be vacuous"
    assert our_error <= BF16_RATIO * hf_error, f"bf16 KL {our_error:.2e} > {BF16_RATIO} x HF's {hf_error:.2e}"
    return hf_error, our_error


def check_family(hf_model, directory: Path, *, scan_layers: bool | None = None) -> dict:
    """Every check above; returns the measured errors (the test may print them)."""
    hf_model = hf_model.eval().float()
    vocab = hf_model.config.vocab_size
    f32, bf16 = save(hf_model, directory)
    model, params, _ = infodec.load(f32, dtype=jnp.float32, scan_layers=scan_layers)
    report = {
        "logits": check_logits(hf_model, model, params, vocab),
        "left_padding": check_left_padding(hf_model, model, params, vocab),
        "cache": check_cache(model, params, vocab),
    }
    check_greedy(hf_model, model, params, vocab)
    report["bf16_kl_hf"], report["bf16_kl_infodec"] = check_bf16(hf_model, bf16, vocab)
    return report
