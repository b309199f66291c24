"""Parity of our Flax GPT-2, GPT-NeoX and BERT with HF transformers' PyTorch models.

Reference: tests/fixtures/lm/<arch>/reference.safetensors, written once by
tests/make_lm_fixtures.py with transformers 5.24 + torch 2.13 (CPU, float32, eager
attention) from forward hooks on the HF modules, for random-weight 2-layer d=32
checkpoints (LayerNorm gains and all biases randomised, so no term is trivially 0/1),
on a batch with one right-padded row. Every hookpoint (resid_mid and mlp_in included) and
the logits must agree within 1e-5 relative error (max |ours - theirs| / max |theirs|) at
every position. The decoder families (Llama, Qwen, Gemma) are in lm_decoder_test.py.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from jaxcode import parallel
from jaxcode.models.lm import load_pretrained

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "lm")
ARCHS = ("gpt2", "gpt_neox", "bert", "gpt_neox_seq")


def rel_err(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def reference(arch):
  return load_file(os.path.join(FIX, arch, "reference.safetensors"))


def check_edits_at_new_hookpoints(lm, ids, mask, block: int = 0):
  """Edits at resid_mid and mlp_in of one block (run up to that block, the four variants
  in one compiled program): identity edits change nothing; scaling mlp_in changes
  what the MLP reads and the block output but not the residual stream before it; adding a
  ramp to resid_mid changes the block output."""
  b = f"blocks.{block}."
  ramp = lambda x: x + jnp.linspace(-1.0, 1.0, x.shape[-1], dtype=x.dtype)  # LayerNorm keeps it
  variants = (None, {b + "resid_mid": lambda x: x, b + "mlp_in": lambda x: x},
              {b + "mlp_in": lambda x: 0.5 * x}, {b + "resid_mid": ramp})

  @jax.jit
  def run_all(params, ids, mask):
    return [lm.module.apply({"params": params}, ids, mask, block + 1, False, edits=e)
            for e in variants]

  base, same, half, shift = run_all(lm.params, jnp.asarray(ids), jnp.asarray(mask))
  for n in base:
    assert rel_err(same[n], base[n]) < 1e-6, n
  assert rel_err(half[b + "mlp_in"], 0.5 * base[b + "mlp_in"]) < 1e-6
  assert rel_err(half[b + "resid_mid"], base[b + "resid_mid"]) < 1e-6
  for n in (b + "mlp_hidden", b + "mlp_out", b + "resid_post"):
    assert rel_err(half[n], base[n]) > 1e-3, n
  assert rel_err(shift[b + "resid_post"], base[b + "resid_post"]) > 1e-3


@pytest.fixture(scope="module", params=ARCHS)
def loaded(request):
  return request.param, load_pretrained(os.path.join(FIX, request.param))


def test_every_hookpoint_matches_hf_torch(loaded):
  arch, lm = loaded
  ref = reference(arch)
  names = lm.hookpoint_names()
  assert set(names) == set(ref) - {"input_ids", "attention_mask"}
  out = lm.apply(ref["input_ids"], ref["attention_mask"], names)
  errs = {n: rel_err(out[n], ref[n]) for n in names}
  print(arch, "max rel err", max(errs.values()), max(errs, key=errs.get))
  bad = {n: e for n, e in errs.items() if e > 1e-5}
  assert not bad, bad


def test_edits_at_resid_mid_and_mlp_in(loaded):
  """Spliced-in functions at the new hookpoints act where HF's block computes them."""
  arch, lm = loaded
  ref = reference(arch)
  check_edits_at_new_hookpoints(lm, ref["input_ids"], ref["attention_mask"])


def test_tokenizer_reproduces_reference_ids(loaded):
  arch, lm = loaded
  with safe_open(os.path.join(FIX, arch, "reference.safetensors"), "numpy") as f:
    texts = json.loads(f.metadata()["texts"])
  ref = reference(arch)
  ids, mask = lm.tokenize(texts)
  np.testing.assert_array_equal(ids, ref["input_ids"])
  np.testing.assert_array_equal(mask, ref["attention_mask"])


def test_early_stop_gives_same_block_activations():
  """Asking only for block 0 runs one block and returns what the full forward returns."""
  arch = "gpt_neox"
  lm = load_pretrained(os.path.join(FIX, arch), tokenizer=False)
  ref = reference(arch)
  out = lm.apply(ref["input_ids"], ref["attention_mask"], ["embed", "blocks.0.mlp_out"])
  assert set(out) == {"embed", "blocks.0.mlp_out"}
  assert rel_err(out["blocks.0.mlp_out"], ref["blocks.0.mlp_out"]) < 1e-5
  args = (lm.params, jnp.asarray(ref["input_ids"]), jnp.asarray(ref["attention_mask"]))
  n_dots = lambda hp: str(jax.make_jaxpr(lm.forward_fn(hp))(*args)).count("dot_general")
  last = f"blocks.{lm.n_layers - 1}.resid_post"
  assert n_dots(("blocks.0.resid_post",)) * lm.n_layers == n_dots((last,)) > 0


def test_bfloat16_compute_keeps_float32_params():
  """bf16 compute: params float32, activations bf16, logits close to the f32 reference."""
  lm = load_pretrained(os.path.join(FIX, "gpt_neox"), dtype=jnp.bfloat16)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(lm.params))
  ref = reference("gpt_neox")
  out = lm.apply(ref["input_ids"], ref["attention_mask"], ["blocks.1.resid_post", "logits"])
  assert out["blocks.1.resid_post"].dtype == jnp.bfloat16
  assert rel_err(out["logits"], ref["logits"]) < 5e-2


def test_sharded_params_and_batch_equal_single_device():
  """Params split over `model` (2) and the batch over `data` (4): same numbers as one device."""
  ref = reference("bert")
  ids = np.tile(ref["input_ids"], (2, 1))
  mask = np.tile(ref["attention_mask"], (2, 1))
  single = load_pretrained(os.path.join(FIX, "bert"))
  mesh = parallel.make_mesh(data=4, model=2)
  sharded = load_pretrained(os.path.join(FIX, "bert"), mesh=mesh)
  q = sharded.params["layer_0"]["query"]["kernel"]
  assert q.sharding.spec == jax.sharding.PartitionSpec(None, "model")
  names = ["blocks.1.mlp_hidden", "logits"]
  a, b = single.apply(ids, mask, names), sharded.apply(ids, mask, names)
  for n in names:
    assert rel_err(b[n], a[n]) < 1e-5, n


def test_sharded_index_checkpoint(tmp_path):
  """A checkpoint split over two files with model.safetensors.index.json loads identically."""
  import shutil
  from safetensors.numpy import save_file
  src = os.path.join(FIX, "gpt2")
  for f in os.listdir(src):
    if f != "model.safetensors":
      shutil.copy(os.path.join(src, f), tmp_path / f)
  t = load_file(os.path.join(src, "model.safetensors"))
  keys = sorted(t)
  halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
  for name, ks in halves.items():
    save_file({k: t[k] for k in ks}, str(tmp_path / name))
  index = {"metadata": {}, "weight_map": {k: n for n, ks in halves.items() for k in ks}}
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
  a = load_pretrained(src).params
  b = load_pretrained(str(tmp_path)).params
  jax.tree.map(np.testing.assert_array_equal, a, b)
