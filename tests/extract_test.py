"""launch.extract / experiments.extract / pipeline.cache: kill-and-rerun, sharding, bad input.

References we did not write: the cached activations are compared with the forward of the
loaded model (itself checked against HF transformers' PyTorch outputs in lm_parity_test.py
and lm_minilm_test.py) at the same tokens, and the cached token ids with the HF
tokenizer's packing of the same corpus slice.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import extract as configs
from jaxcode import parallel
from jaxcode.data.activations import ActivationCache
from jaxcode.experiments import extract as exp
from jaxcode.pipeline import cache as cache_lib
from jaxcode.pipeline import model as model_lib
from jaxcode.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPT2 = os.path.join(ROOT, "tests", "fixtures", "lm", "gpt2")


def tiny(**kw):
  c = configs.get_config("tiny")
  c.progress = False
  for k, v in kw.items():
    c[k] = v
  return c


HOOKS = ("blocks.0.resid_post", "blocks.1.mlp_hidden")


def tiny_gpt2(**kw):
  """The tiny variant on the 2-block random GPT-2 fixture: a few hundred tokens."""
  return tiny(**dict(dict(model=GPT2, hookpoints=HOOKS, corpus="default:1", seq_len=16,
                          max_tokens=256, dtype="float32"), **kw))


def child_env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1")
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if "xla_force_host_platform_device_count" not in f)
  return env


def test_sigkill_midway_then_rerun_finishes_without_redoing_chunks(tmp_path):
  wd = tmp_path / "run"
  manifest = wd / "activations" / "manifest.json"
  c = tiny_gpt2(batch_size=1, rows_per_chunk=1, max_tokens=512, corpus="default:2")
  cmd = [sys.executable, "-m", "launch.extract", "--config=configs/extract.py:tiny",
         f"--workdir={wd}", "--config.progress=False"] + [
         f"--config.{k}={c[k]}" for k in ("model", "corpus", "seq_len", "max_tokens", "dtype",
                                          "batch_size", "rows_per_chunk")] + [
         f"--config.hookpoints=({HOOKS[0]!r},{HOOKS[1]!r})"]
  proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    try:
      if len(json.loads(manifest.read_text())["chunks"]) >= 2:
        break
    except (OSError, ValueError, KeyError):
      pass
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, proc.stdout.read().decode()[-2000:]
  before = json.loads(manifest.read_text())      # atomic: always a whole manifest
  done = [e["index"] for e in before["chunks"]]
  assert not before["complete"] and len(done) >= 2
  first = wd / "activations" / HOOKS[0] / "chunk_00000.npy"
  mtime = os.stat(first).st_mtime_ns
  (wd / "activations" / "tokens" / "chunk_00099.npz.tmp12345").write_bytes(b"half")  # a cut-off write

  out = exp.run(c, str(wd), mesh=parallel.single_device_mesh())
  assert out["complete"] and out["chunks_kept"] == len(done)
  assert out["chunks_kept"] + out["chunks_computed"] == out["chunks"] == 32
  assert out["stale_temporaries_removed"] >= 1
  assert not glob.glob(str(wd / "activations" / "**" / "*.tmp*"), recursive=True)
  assert os.stat(first).st_mtime_ns == mtime
  cache = ActivationCache.open(str(wd / "activations"), model=GPT2, hookpoints=c.hookpoints)
  assert cache.verify() == []
  # contents: the model's forward at the kept (non-special, attended) positions
  lm = model_lib.load(model_lib.resolve(c.model), mesh=parallel.single_device_mesh())
  packed = cache_lib.load_packed(c, lm.tokenizer)
  keep = packed.attention_mask.astype(bool) & ~packed.special
  assert cache.n_tokens == out["n_tokens"] == keep.sum() == sum(out["tokens_by_source"].values())
  assert set(out["tokens_by_source"]) == {"prose", "code"}
  idx = np.arange(0, cache.n_tokens, 7)
  np.testing.assert_array_equal(cache.token_info(idx)["token_ids"], packed.input_ids[keep][idx])
  ref = lm.apply(packed.input_ids, packed.attention_mask, c.hookpoints)
  for h in c.hookpoints:
    np.testing.assert_allclose(cache.get(h, idx), np.asarray(ref[h])[keep][idx], rtol=1e-5,
                               atol=1e-6)
  res = json.loads((wd / "results.json").read_text())
  assert res["tokens_per_s"] > 0 and json.loads((wd / "config.json").read_text())["seq_len"] == 16
  again = exp.run(c, str(wd), mesh=parallel.single_device_mesh())   # finished: a no-op
  assert again == res and os.stat(first).st_mtime_ns == mtime
  assert [r["chunks_computed"] for r in again["runs"]] == [out["chunks_computed"]]
  assert again["tokens_per_s_all_runs"] > 0


def test_eight_devices_equal_one_and_bad_input(tmp_path):
  c = tiny_gpt2()
  one = exp.run(c, str(tmp_path / "one"), mesh=parallel.single_device_mesh())
  eight = exp.run(c, str(tmp_path / "eight"), mesh=parallel.make_mesh(8, 1))
  assert eight["mesh"] == {"data": 8, "model": 1} and one["n_tokens"] == eight["n_tokens"] > 0
  a = ActivationCache.open(str(tmp_path / "one" / "activations"))
  b = ActivationCache.open(str(tmp_path / "eight" / "activations"))
  idx = np.arange(a.n_tokens)
  for h in c.hookpoints:
    np.testing.assert_allclose(a.get(h, idx), b.get(h, idx), rtol=1e-5, atol=1e-6)

  mesh = parallel.single_device_mesh()
  wd = str(tmp_path / "one")
  with pytest.raises(ConfigError, match="does not exist"):
    exp.run(tiny(model=str(tmp_path / "no_such_model")), str(tmp_path / "x"), mesh=mesh)
  with pytest.raises(ConfigError, match="layer 2 does not exist"):
    exp.run(tiny(model=GPT2, hookpoints=("blocks.2.resid_post",)), str(tmp_path / "x"), mesh=mesh)
  with pytest.raises(ConfigError, match="blocks.0.mlp_pre"):
    exp.run(tiny(model=GPT2, hookpoints=("blocks.0.mlp_pre",)), str(tmp_path / "x"), mesh=mesh)
  empty = tmp_path / "empty.txt"
  empty.write_text("  \n")
  with pytest.raises(ConfigError, match="no non-empty documents"):
    exp.run(tiny_gpt2(corpus=str(empty)), str(tmp_path / "x"), mesh=mesh)
  n_files = len(glob.glob(os.path.join(wd, "activations", "**", "*"), recursive=True))
  with pytest.raises(ConfigError, match="hookpoints"):   # the cache holds other hookpoints
    exp.run(tiny_gpt2(hookpoints=HOOKS[:1]), wd, mesh=mesh)
  with pytest.raises(ConfigError, match="corpus='default:1'"):   # the workdir's run, another corpus
    exp.run(tiny_gpt2(corpus="default:2"), wd, mesh=mesh)
  assert len(glob.glob(os.path.join(wd, "activations", "**", "*"), recursive=True)) == n_files
  with pytest.raises(ConfigError, match="rows_per_chunk"):
    exp.run(tiny_gpt2(rows_per_chunk=12), str(tmp_path / "x"), mesh=mesh)
  with pytest.raises(ConfigError, match="batch_size=8: expected a multiple"):
    exp.run(tiny_gpt2(), str(tmp_path / "x"), mesh=_mesh3())


def _mesh3():
  import jax
  return parallel.make_mesh(3, 1, devices=jax.devices()[:3])


def test_cache_stage_takes_a_block_without_the_optional_fields(tmp_path):
  """The atlas's extract block (no text_field, max_docs, drop_special, compute_dtype,
  progress) runs the stage with the stage's defaults, equals the extract experiment's cache
  of the same settings, and a complete intact folder is reused."""
  from ml_collections import ConfigDict
  c = tiny_gpt2()
  mesh = parallel.single_device_mesh()
  ref = exp.run(c, str(tmp_path / "exp"), mesh=mesh)
  block = ConfigDict({k: c[k] for k in ("corpus", "seq_len", "max_tokens", "batch_size",
                                        "rows_per_chunk", "dtype")})
  spec = model_lib.resolve(GPT2)
  lm = model_lib.load(spec, mesh=mesh, dtype=cache_lib.compute_dtype(block))
  folder = str(tmp_path / "stage")
  out = cache_lib.cache_activations(block, folder, lm, spec, HOOKS, mesh)
  assert out["n_tokens"] == ref["n_tokens"] and out["compute_dtype"] == "float32"
  for rel in ("manifest.json", "tokens/chunk_00000.npz", f"{HOOKS[1]}/chunk_00001.npy"):
    with open(os.path.join(folder, "activations", rel), "rb") as f, \
        open(os.path.join(str(tmp_path / "exp"), "activations", rel), "rb") as g:
      assert f.read() == g.read(), rel
  assert cache_lib.cache_activations(block, folder, lm, spec, HOOKS, mesh) == out
