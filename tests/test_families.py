"""Every model family against HF transformers on a tiny random checkpoint (``tests/family_parity.py``).

One test per family: the model is built from the family's own transformers config class, saved sharded in
float32 and in bfloat16, and checked for logits, left padding, the KV cache, greedy generation and the bf16
criterion. Sizes are tiny (2 layers, hidden 64, vocabulary 128) so each family runs in seconds.
"""

from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as t

import infodec
from infodec.models import llama as infodec_llama
from infodec.models.checkpoints import ARCHITECTURES
from tests.family_parity import check_family, hf_logits

VOCAB = 128
BASE: dict[str, Any] = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    initializer_range=0.1,  # larger than HF's 0.02, so logits are far from uniform and bf16 matters
)


def build(config_class, model_class, **fields):
    torch.manual_seed(0)
    return model_class(config_class(**fields))


def gemma3():
    config = t.Gemma3TextConfig(**BASE, head_dim=16, sliding_window=4)
    config.layer_types = ["sliding_attention", "full_attention"]
    torch.manual_seed(0)
    return t.Gemma3ForCausalLM(config)


def gpt2():
    config = t.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64, initializer_range=0.1)
    config.bos_token_id = config.eos_token_id = 0
    torch.manual_seed(0)
    return t.GPT2LMHeadModel(config)


def gpt_neox(parallel: bool):
    # Pythia's rotary_pct 0.25 with the parallel residual; half the head rotated with the sequential one.
    config = t.GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        initializer_range=0.1,
        use_parallel_residual=parallel,
        rotary_pct=0.25 if parallel else 0.5,  # pyright: ignore[reportCallIssue] (a legacy kwarg HF still reads)
    )
    torch.manual_seed(0)
    return t.GPTNeoXForCausalLM(config)


def opt(pre_norm: bool):
    # word_embed_proj_dim != hidden_size (project_in/out), as OPT-350m; post-norm is 350m's layout.
    config = t.OPTConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        ffn_dim=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        word_embed_proj_dim=32,
        do_layer_norm_before=pre_norm,
        init_std=0.1,
        dropout=0.0,
    )
    torch.manual_seed(0)
    return t.OPTForCausalLM(config)


def gemma2():
    # Small caps and query_pre_attn_scalar = head_dim, so both soft-caps bend the tiny model's scores.
    config = t.Gemma2Config(
        **BASE,
        head_dim=16,
        sliding_window=4,
        query_pre_attn_scalar=16,
        attn_logit_softcapping=2.0,
        final_logit_softcapping=5.0,
    )
    torch.manual_seed(0)
    return t.Gemma2ForCausalLM(config)


def gemma3_multimodal():
    # Gemma3ForConditionalGeneration (model_type "gemma3"): infodec reads the text model only.
    text = dict(BASE, head_dim=16, sliding_window=4, layer_types=["sliding_attention", "full_attention"])
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, image_size=28)
    config = t.Gemma3Config(text_config=text, vision_config=dict(vision, patch_size=14), mm_tokens_per_image=4)
    config.vocab_size = VOCAB  # read by the harness
    torch.manual_seed(0)
    return t.Gemma3ForConditionalGeneration(config)


# Phi-3-mini-128k's longrope, scaled down (8 factors per set for head_dim 16). HF picks the set by the
# length a forward pass reaches, and its generate re-prefills when a decode first crosses the original
# context; infodec's static cache cannot, so each variant stays on one side of it through the harness:
# original context 48 (all short factors, the default attention factor of 64 / 48), or 1 (all long
# factors, from the first token on; an explicit attention_factor, as ln(1) = 0 leaves none by default).
PHI3_LONGROPE = {
    "rope_type": "longrope",
    "short_factor": [1.0, 1.05, 1.1, 1.2, 1.4, 1.7, 2.0, 2.5],
    "long_factor": [1.0, 1.5, 2.5, 4.0, 6.0, 9.0, 14.0, 20.0],
    "rope_theta": 10000.0,
}


def phi3(original: int | None = None):
    fields: dict[str, Any] = dict(BASE, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if original is None:
        fields.update(sliding_window=4)  # Phi-3-mini-4k has one (2047), on every layer
    else:
        rope = dict(PHI3_LONGROPE, **({"attention_factor": 1.2} if original == 1 else {}))
        fields.update(rope_parameters=rope, original_max_position_embeddings=original)
    torch.manual_seed(0)
    return t.Phi3ForCausalLM(t.Phi3Config(**fields))


LLAMA_DYNAMIC = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
# factor 4 = max_position_embeddings 64 / original 16, so HF's consistency check is quiet.
LLAMA_YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 10000.0}


FAMILIES = {
    "llama": lambda: build(t.LlamaConfig, t.LlamaForCausalLM, **BASE),
    "qwen2": lambda: build(t.Qwen2Config, t.Qwen2ForCausalLM, **BASE, tie_word_embeddings=True),
    "gemma3_text": gemma3,
    "gpt2": gpt2,
    "qwen3": lambda: build(t.Qwen3Config, t.Qwen3ForCausalLM, **BASE, head_dim=16),
    "qwen3_yarn": lambda: build(
        t.Qwen3Config, t.Qwen3ForCausalLM, **BASE, head_dim=16, rope_parameters=dict(LLAMA_YARN)
    ),
    # Layer 1 dense (mlp_only_layers), layer 0 a mixture of 4 experts: both MLP paths.
    "qwen3_moe": lambda: build(
        t.Qwen3MoeConfig,
        t.Qwen3MoeForCausalLM,
        **BASE,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        mlp_only_layers=[1],
    ),
    "mixtral": lambda: build(
        t.MixtralConfig, t.MixtralForCausalLM, **BASE, num_local_experts=4, num_experts_per_tok=2, sliding_window=None
    ),
    "gpt_neox_parallel": lambda: gpt_neox(parallel=True),
    "gpt_neox_sequential": lambda: gpt_neox(parallel=False),
    "opt_pre_norm": lambda: opt(pre_norm=True),
    "opt_post_norm": lambda: opt(pre_norm=False),
    "llama_dynamic": lambda: build(t.LlamaConfig, t.LlamaForCausalLM, **BASE, rope_parameters=dict(LLAMA_DYNAMIC)),
    "llama_yarn": lambda: build(t.LlamaConfig, t.LlamaForCausalLM, **BASE, rope_parameters=dict(LLAMA_YARN)),
    "mistral_window": lambda: build(t.MistralConfig, t.MistralForCausalLM, **BASE, sliding_window=4),
    "gemma2": gemma2,
    "gemma3_multimodal": gemma3_multimodal,
    "olmo2": lambda: build(t.Olmo2Config, t.Olmo2ForCausalLM, **BASE),
    "phi3": phi3,
    "phi3_longrope_short": lambda: phi3(original=48),
    "phi3_longrope_long": lambda: phi3(original=1),
    # Phi-4-mini's layout: half of each head rotated, LM head tied to the embedding.
    "phi3_partial_rotary": lambda: build(
        t.Phi3Config, t.Phi3ForCausalLM, **BASE, partial_rotary_factor=0.5, tie_word_embeddings=True, pad_token_id=0
    ),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_matches_hf(family, tmp_path, capsys):
    report = check_family(FAMILIES[family](), tmp_path)
    with capsys.disabled():
        print(f"\n{family}: " + ", ".join(f"{k} {v:.1e}" for k, v in report.items()))


DYNAMIC_FAMILIES = {
    "llama": (t.LlamaConfig, t.LlamaForCausalLM, {}),
    "qwen3": (t.Qwen3Config, t.Qwen3ForCausalLM, {"head_dim": 16}),
    "gpt_neox": (t.GPTNeoXConfig, t.GPTNeoXForCausalLM, {"rotary_pct": 0.5}),  # partial rotary: d = 8
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(DYNAMIC_FAMILIES))
def test_dynamic_rope_past_max_positions_is_hf_forward_rule(family, tmp_path):
    """Dynamic NTK past max_position_embeddings (8 here): HF recomputes the base at every forward call from
    its largest position. (i) A left-padded batch of 12 slots whose largest position is 9: padding must not
    count (12 would give other frequencies). (ii) A cached decode crossing position 8 step by step against
    HF's step-by-step cached forward: each step rotates with its own frequencies, cached keys keep theirs.
    (Greedy generation cannot cross: the engine stops at ``max_length`` = max_position_embeddings.)"""
    config_class, model_class, extra = DYNAMIC_FAMILIES[family]
    fields = {**BASE, **extra, "max_position_embeddings": 8, "rope_parameters": dict(LLAMA_DYNAMIC)}
    build(config_class, model_class, **fields).save_pretrained(tmp_path)
    model, params, _ = infodec.load(tmp_path, dtype=jnp.float32)
    rng = np.random.RandomState(0)

    # (i) full sequence; a fresh HF model each time (its rotary module keeps state between calls).
    tokens = rng.randint(0, VOCAB, (2, 12))
    lengths = [10, 9]
    mask = np.stack([np.arange(12) >= 12 - n for n in lengths])
    positions = np.where(mask, np.cumsum(mask, 1) - 1, -1)
    ours = np.asarray(model.apply(params, tokens, positions, model.init_cache(2, 12))[0])
    with torch.no_grad():
        theirs = (
            build(config_class, model_class, **fields)
            .eval()(
                torch.tensor(tokens),
                attention_mask=torch.tensor(mask.astype(np.int64)),
                position_ids=torch.tensor(np.maximum(positions, 0)),
            )
            .logits.numpy()
        )
    assert np.abs(ours[mask] - theirs[mask]).max() < 1e-4
    hf_static = {**fields, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}
    with torch.no_grad():
        default = build(config_class, model_class, **hf_static)(
            torch.tensor(tokens[:1, 2:]), position_ids=torch.arange(10)[None]
        ).logits.numpy()
    assert np.abs(ours[0, 2:] - default[0]).max() > 1e-3  # past 8 the frequencies did change

    # (ii) cached decode from a 5-token prefill across position 8 to 13.
    tokens = rng.randint(0, VOCAB, 14)
    hf_model = build(config_class, model_class, **fields).eval()
    cache, steps, theirs_steps = model.init_cache(1, 14), [], []
    with torch.no_grad():
        out = hf_model(torch.tensor(tokens[None, :5]), use_cache=True)
        theirs_steps.append(out.logits[0, -1].numpy())
        for p in range(5, 14):
            ids, step_positions = torch.tensor([[tokens[p]]]), torch.tensor([[p]])
            out = hf_model(ids, cache=out.past_key_values, use_cache=True, position_ids=step_positions)
            theirs_steps.append(out.logits[0, -1].numpy())
    logits, cache = model.apply(params, tokens[None, :5], np.arange(5)[None], cache)
    steps.append(np.asarray(logits)[0, -1])
    for p in range(5, 14):
        logits, cache = model.apply(params, tokens[None, p : p + 1], np.array([[p]]), cache)
        steps.append(np.asarray(logits)[0, -1])
    assert np.abs(np.stack(steps) - np.stack(theirs_steps)).max() < 1e-4


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}, "unsupported rope scaling type"),
        ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4}}, "lacks the field"),
        ({"hidden_act": "swish_of_the_future"}, "unsupported hidden_act"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ],
)
def test_llama_config_fields_it_cannot_run_raise(fields, message):
    hf = {**BASE, "model_type": "llama", **fields}
    with pytest.raises(ValueError, match=message):
        infodec_llama.LlamaConfig.from_hf(hf)


def test_sliding_windows_from_config():
    mistral = infodec_llama.LlamaConfig.from_hf({**BASE, "model_type": "mistral", "sliding_window": 4})
    assert np.asarray(mistral.layer_windows()).tolist() == [4, 4]
    unwindowed = infodec_llama.LlamaConfig.from_hf({**BASE, "model_type": "mistral", "sliding_window": None})
    assert unwindowed.sliding_window is None
    qwen2 = {**BASE, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1}
    windows = infodec_llama.LlamaConfig.from_hf(qwen2).layer_windows()
    assert np.asarray(windows).tolist() == [infodec_llama.NO_WINDOW, 4]
    assert infodec_llama.LlamaConfig.from_hf({**qwen2, "use_sliding_window": False}).sliding_window is None


def test_mistral_window_with_scanned_layers(tmp_path):
    """The per-layer window traced through ``nn.scan`` (the family test runs unrolled layers on CPU)."""
    hf_model = FAMILIES["mistral_window"]().eval()
    hf_model.save_pretrained(tmp_path)
    model, params, _ = infodec.load(tmp_path, dtype=jnp.float32, scan_layers=True)
    tokens = np.random.RandomState(0).randint(0, VOCAB, (2, 11))
    positions = jnp.broadcast_to(jnp.arange(11), tokens.shape)
    ours = np.asarray(model.apply(params, jnp.asarray(tokens), positions)[0])
    assert np.abs(ours - hf_logits(hf_model, tokens)).max() < 1e-4


@pytest.mark.parametrize(
    ("family", "fields", "message"),
    [
        ("gemma2", {"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "unsupported rope scaling type"),
        ("olmo2", {"rope_parameters": {"rope_type": "longrope"}}, "unsupported rope_type"),
        ("phi3", {"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "unsupported rope_type"),
        ("phi3", {"attention_bias": True}, "attention_bias"),
        ("phi3", {"partial_rotary_factor": 0.1}, "partial_rotary_factor"),  # 1.6 -> 1 dimension
    ],
)
def test_config_fields_the_family_cannot_run_raise(family, fields, message):
    hf = {**BASE, "model_type": family, **fields}
    with pytest.raises(ValueError, match=message):
        ARCHITECTURES[family].Config.from_hf(hf)


def test_gemma3_multimodal_text_config_defaults():
    """A multimodal config.json lists only the text fields that differ from ``Gemma3TextConfig``'s defaults."""
    config = ARCHITECTURES["gemma3"].Config.from_hf(
        {"model_type": "gemma3", "text_config": {"hidden_size": 2560, "num_hidden_layers": 34}}
    )
    assert (config.vocab_size, config.num_heads, config.num_kv_heads, config.head_dim) == (262_208, 8, 4, 256)
    assert config.layer_types[:6] == ("sliding_attention",) * 5 + ("full_attention",)


def test_phi3_longrope_crossing_is_hf_forward_rule(tmp_path):
    """A cached decode crossing longrope's original context takes the long factors from the call that
    reaches past it, keeping the keys it cached with the short ones: HF's forward pass, step by step
    (HF's generate instead re-prefills at that step, which a static cache cannot)."""
    hf_model = phi3(original=12).eval()
    hf_model.save_pretrained(tmp_path)
    model, params, _ = infodec.load(tmp_path, dtype=jnp.float32)
    tokens = np.random.RandomState(0).randint(0, VOCAB, 16)
    cache, steps, theirs = model.init_cache(1, 16), [], []
    with torch.no_grad():
        out = hf_model(torch.tensor(tokens[None, :8]), use_cache=True)
        theirs.append(out.logits[0, -1].numpy())
        for p in range(8, 16):
            ids, positions = torch.tensor([[tokens[p]]]), torch.tensor([[p]])
            out = hf_model(ids, cache=out.past_key_values, use_cache=True, position_ids=positions)
            theirs.append(out.logits[0, -1].numpy())
    logits, cache = model.apply(params, tokens[None, :8], np.arange(8)[None], cache)
    steps.append(np.asarray(logits)[0, -1])
    for p in range(8, 16):
        logits, cache = model.apply(params, tokens[None, p : p + 1], np.array([[p]]), cache)
        steps.append(np.asarray(logits)[0, -1])
    assert np.abs(np.stack(steps) - np.stack(theirs)).max() < 1e-4
