"""Parity of our Flax Llama, Qwen2, Qwen3, Gemma 2 and Gemma 3 forwards with HF transformers'
PyTorch models, and their configs, rotary settings, sharding and edits.

Reference: tests/fixtures/lm/<name>/reference.safetensors, written once by
tests/make_decoder_fixtures.py with transformers 5.24.0 + torch 2.13 (CPU, float32, eager
attention) from forward hooks on the HF modules, for tiny random-weight checkpoints (norm
gains and biases randomised) on a 13-token batch with one right-padded row, longer than the
sliding windows: llama (GQA, untied, llama3 rope), smollm (tied, 3 query heads per KV
head), qwen2 (q/k/v biases), qwen3 (q/k norms, head_dim != D/H), gemma2 (soft-caps,
alternating window 4, query_pre_attn_scalar != head_dim), gemma3_text (q/k norms, sliding
and global layers with their own rope, one KV head). Every hookpoint and the logits must
agree within 1e-5 relative error (max |ours - theirs| / max |theirs|) at every position.
"""

import functools
import json
import os
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from jax.sharding import PartitionSpec as P
from safetensors import safe_open

from jaxcode import parallel
from jaxcode.errors import ConfigError
from jaxcode.models.lm import gemma, llama, load_pretrained, parse_hookpoints
from jaxcode.models.lm.layers import Rope, rope_from_config
from tests.lm_parity_test import FIX, check_edits_at_new_hookpoints, reference, rel_err

FAMILIES = ("llama", "smollm", "qwen2", "qwen3", "gemma2", "gemma3_text")
SLIDE, FULL = "sliding_attention", "full_attention"


@functools.lru_cache(maxsize=None)
def single(name):
  """The loaded model and every hookpoint of its reference batch on one device (one compile,
  shared by the parity and sharding tests)."""
  lm = load_pretrained(os.path.join(FIX, name))
  ref = reference(name)
  return lm, lm.apply(ref["input_ids"], ref["attention_mask"], lm.hookpoint_names())


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request):
  return request.param, single(request.param)[0]


@pytest.fixture(scope="module")
def gemma3():
  return load_pretrained(os.path.join(FIX, "gemma3_text"), tokenizer=False)


def test_every_hookpoint_matches_hf_torch(loaded):
  """Every hookpoint and the logits against HF transformers' PyTorch forward (hooks)."""
  name, lm = loaded
  ref = reference(name)
  names = lm.hookpoint_names()
  assert set(names) == set(ref) - {"input_ids", "attention_mask"}
  out = single(name)[1]
  errs = {n: rel_err(out[n], ref[n]) for n in names}
  print(name, "max rel err", max(errs.values()), max(errs, key=errs.get))
  bad = {n: e for n, e in errs.items() if e > 1e-5}
  assert not bad, bad


def test_tokenizer_reproduces_reference_ids(loaded):
  """Our tokenize() gives the ids and mask HF's tokenizer gave when the fixture was made."""
  name, lm = loaded
  with safe_open(os.path.join(FIX, name, "reference.safetensors"), "numpy") as f:
    texts = json.loads(f.metadata()["texts"])
  ref = reference(name)
  ids, mask = lm.tokenize(texts)
  np.testing.assert_array_equal(ids, ref["input_ids"])
  np.testing.assert_array_equal(mask, ref["attention_mask"])


def test_fixtures_exercise_the_features(loaded):
  """What each HF config says (read by transformers' AutoConfig) reaches our module."""
  name, lm = loaded
  m, T = lm.module, reference(name)["input_ids"].shape[1]
  a = m.attn
  want = {"llama": lambda: a[0].rope.kind == "llama3" and a[0].n_kv_heads == 2 and not m.tied,
          "smollm": lambda: m.tied and a[0].n_heads == 3 * a[0].n_kv_heads,
          "qwen2": lambda: a[0].qkv_bias and not a[0].o_bias and m.tied,
          "qwen3": lambda: a[0].qk_norm and a[0].head_dim * a[0].n_heads != m.d_model,
          "gemma2": lambda: (a[0].softcap and m.final_softcap and a[0].window < T
                             and a[1].window is None and a[0].scale != a[0].head_dim ** -0.5),
          "gemma3_text": lambda: ([s.window is None for s in a] == [False, True, False]
                                  and a[0].window < T and a[0].qk_norm and a[0].n_kv_heads == 1
                                  and a[0].rope.theta != a[1].rope.theta
                                  and a[1].rope.kind == "linear")}
  assert want[name](), a
  assert lm.hookpoint_width("blocks.0.mlp_in") == lm.hookpoint_width("blocks.0.resid_mid") == m.d_model
  assert lm.hookpoint_width("blocks.0.mlp_hidden") == m.d_mlp


@pytest.mark.parametrize("name,block", [("llama", 0), ("gemma3_text", 1)])
def test_edits_at_resid_mid_and_mlp_in(name, block):
  """Spliced-in functions at the new hookpoints act where HF's block computes them."""
  lm = single(name)[0]
  ref = reference(name)
  check_edits_at_new_hookpoints(lm, ref["input_ids"], ref["attention_mask"], block=block)


def test_early_stop_runs_only_the_blocks_asked_for(gemma3):
  """Asking only for block 0 runs one block and returns what the full forward returns."""
  ref = reference("gemma3_text")
  out = gemma3.apply(ref["input_ids"], ref["attention_mask"], ["blocks.0.mlp_in"])
  assert rel_err(out["blocks.0.mlp_in"], ref["blocks.0.mlp_in"]) < 1e-5
  args = (gemma3.params, jnp.asarray(ref["input_ids"]), jnp.asarray(ref["attention_mask"]))
  n_dots = lambda hp: str(jax.make_jaxpr(gemma3.forward_fn(hp))(*args)).count("dot_general")
  last = f"blocks.{gemma3.n_layers - 1}.resid_post"
  assert n_dots(("blocks.0.resid_post",)) * gemma3.n_layers == n_dots((last,)) > 0


def test_bfloat16_compute_keeps_float32_params():
  """bf16 compute (Gemma 3: sqrt(D) and (1 + w) norms): params float32, activations bf16,
  logits close to HF's float32 reference."""
  lm = load_pretrained(os.path.join(FIX, "gemma3_text"), dtype=jnp.bfloat16, tokenizer=False)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(lm.params))
  ref = reference("gemma3_text")
  out = lm.apply(ref["input_ids"], ref["attention_mask"], ["blocks.2.resid_post", "logits"])
  assert out["blocks.2.resid_post"].dtype == jnp.bfloat16
  assert out["logits"].dtype == jnp.float32
  assert rel_err(out["logits"], ref["logits"]) < 5e-2


@pytest.mark.parametrize("name,kv_spec", [("gemma3_text", P()), ("llama", P(None, "model"))])
def test_sharded_params_and_batch_equal_single_device(name, kv_spec):
  """mesh data=4 x model=2: K/V projections sharded only when the KV heads divide over
  `model` (gemma3_text has 1, llama 2); the numbers equal one device's."""
  ref = reference(name)
  ids, mask = np.tile(ref["input_ids"], (2, 1)), np.tile(ref["attention_mask"], (2, 1))
  sharded = load_pretrained(os.path.join(FIX, name), mesh=parallel.make_mesh(data=4, model=2),
                            tokenizer=False)
  layer = sharded.params["layers_0"]
  specs = {n: layer[n]["kernel"].sharding.spec for n in ("q", "k", "v", "o", "gate", "down")}
  assert specs == {"q": P(None, "model"), "k": kv_spec, "v": kv_spec, "o": P("model", None),
                   "gate": P(None, "model"), "down": P("model", None)}
  assert layer["input_layernorm"]["scale"].sharding.spec == P()
  names = ["blocks.1.mlp_hidden", "blocks.1.resid_post", "logits"]
  a, b = single(name)[1], sharded.apply(ids, mask, names)
  for n in names:
    assert rel_err(b[n], np.tile(a[n], (2, 1, 1))) < 1e-5, n


# ---------------------------------------------------------------- configs (no forward)

def gemma3_270m_config(**kw):
  """The text config the GGUF importer writes for Gemma 3 270m (values from the GGUF)."""
  d = dict(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
           num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
           query_pre_attn_scalar=256, rms_norm_eps=1e-6, tie_word_embeddings=True,
           max_position_embeddings=32768, hidden_activation="gelu_pytorch_tanh",
           layer_types=[FULL if (i + 1) % 6 == 0 else SLIDE for i in range(18)],
           rope_parameters={SLIDE: {"rope_type": "default", "rope_theta": 10000.0},
                            FULL: {"rope_type": "default", "rope_theta": 1000000.0}})
  d.update(kw)
  return transformers.Gemma3TextConfig(**d)


def test_gemma3_270m_config_and_param_shapes():
  """HF's Gemma3TextConfig of the 270m model: global layers 5, 11, 17 with theta 1e6, the
  rest slide over 512 keys with theta 1e4; scale 256^-1/2; parameter shapes as HF's."""
  m = gemma.from_hf_config(gemma3_270m_config())
  assert [i for i, s in enumerate(m.attn) if s.window is None] == [5, 11, 17]
  assert {s.window for s in m.attn} == {None, 512}
  assert {(s.window, s.rope.theta) for s in m.attn} == {(None, 1e6), (512, 1e4)}
  assert m.attn[0].scale == 1 / 16 and m.tied and m.final_softcap is None
  shapes = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32),
                                         jnp.ones((1, 2), jnp.int32), 1, True))["params"]
  assert shapes["embed_tokens"]["embedding"].shape == (262144, 640)
  assert shapes["layers_0"]["q"]["kernel"].shape == (640, 1024)
  assert shapes["layers_0"]["k"]["kernel"].shape == (640, 256)
  assert shapes["layers_0"]["q_norm"]["scale"].shape == (256,)
  # the older field names (rope_theta, rope_local_base_freq) give the same settings
  old = gemma.from_hf_config(gemma3_270m_config(rope_parameters=None, rope_theta=1e6,
                                                rope_local_base_freq=1e4))
  assert old.attn == m.attn


def test_rope_settings_from_v4_fields_and_hand_derived_llama3():
  """rope_theta / rope_scaling (older configs) read like v5 rope_parameters; llama3
  frequencies against the formula worked by hand in float64."""
  v4 = SimpleNamespace(model_type="llama", rope_theta=500000.0, max_position_embeddings=131072,
                       rope_scaling={"rope_type": "llama3", "factor": 32.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 8192})
  rope = rope_from_config(v4)
  assert rope == Rope(500000.0, "llama3", 32.0, 1.0, 4.0, 8192.0)
  inv = 500000.0 ** (-np.arange(0, 64, 2) / 64)
  wl = 2 * np.pi / inv
  s = (8192 / wl - 1) / 3
  want = np.where(wl < 2048, inv, np.where(wl > 8192, inv / 32, (1 - s) * inv / 32 + s * inv))
  assert 0 < (wl < 2048).sum() and 0 < (wl > 8192).sum() < 31  # all three bands present
  np.testing.assert_allclose(rope.inv_freq(64), want, rtol=1e-5)
  lin = rope_from_config(SimpleNamespace(model_type="qwen2", rope_theta=1e6,
                                         rope_scaling={"type": "linear", "factor": 4.0}))
  np.testing.assert_allclose(lin.inv_freq(8), 1e6 ** (-np.arange(0, 8, 2) / 8) / 4, rtol=1e-6)


@pytest.mark.parametrize("rope,needle", [
    ({"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}, "'yarn'"),
    ({"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}, "'dynamic'"),
    ({"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5},
     "partial_rotary_factor=0.5")])
def test_unsupported_rope_is_one_line_config_error(rope, needle):
  cfg = SimpleNamespace(model_type="llama", rope_parameters=rope, hidden_size=32,
                        num_attention_heads=4, num_hidden_layers=2, rms_norm_eps=1e-5)
  with pytest.raises(ConfigError) as e:
    rope_from_config(cfg)
  assert needle in str(e.value) and "\n" not in str(e.value)


def test_config_errors_and_new_hookpoint_names():
  """KV heads must divide the query heads; resid_mid / mlp_in parse, beyond the last block not."""
  cfg = transformers.LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=3,
                                 num_hidden_layers=2, intermediate_size=48, vocab_size=64)
  with pytest.raises(ConfigError, match="num_key_value_heads=3"):
    llama.from_hf_config(cfg)
  with pytest.raises(ConfigError, match="use_bidirectional_attention"):
    gemma.from_hf_config(gemma3_270m_config(use_bidirectional_attention=True))
  assert parse_hookpoints(["blocks.2.resid_mid", "blocks.0.mlp_in"], 3)[1] == 3
  with pytest.raises(ConfigError, match="layer 3 does not exist"):
    parse_hookpoints("blocks.3.mlp_in", 3)


def test_gemma3_multimodal_checkpoint_reads_its_language_model(tmp_path):
  """model_type 'gemma3' (text_config, weights under language_model.model.): the logits of
  the gemma3_text fixture's weights equal HF's reference."""
  from safetensors.numpy import load_file, save_file
  src = os.path.join(FIX, "gemma3_text")
  text = json.loads(open(os.path.join(src, "config.json")).read())
  cfg = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
         "text_config": text}
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  weights = load_file(os.path.join(src, "model.safetensors"))
  save_file({"language_model." + k: v for k, v in weights.items()},
            str(tmp_path / "model.safetensors"))
  lm = load_pretrained(str(tmp_path), tokenizer=False)
  assert lm.model_type == "gemma3" and lm.n_layers == 3
  ref = reference("gemma3_text")
  out = lm.apply(ref["input_ids"], ref["attention_mask"], ["logits"])
  assert rel_err(out["logits"], ref["logits"]) < 1e-5
