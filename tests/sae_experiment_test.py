"""SAE experiment through the shared training loop: results, export, exact resumption, errors.

References: the planted dictionary's ground truth (synthetic source), the uninterrupted run as
the reference for the resumed one (bitwise on CPU), and the exported files read back through
our SAELens-format importer (checked against the layout in sae_io_test).
"""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import sae as sae_configs
from jaxcode import parallel
from jaxcode.errors import ConfigError
from jaxcode.experiments import train_sae
from jaxcode.models import sae_io
from jaxcode.pipeline import sae as sae_stage
from jaxcode.train import loop
from launch_util import REPO, cpu_env, free_port, set_fields


def _cfg(arch, **over):
  c = sae_configs.get_config(arch)
  c.unlock()
  c.eval.tokens = 2048
  c.norm_sample_tokens = 512
  set_fields(c, **over)
  c.lock()
  return c


def test_sweep_through_shared_loop_writes_results_and_export(tmp_path):
  mesh = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
  c = _cfg("topk", steps=300, log_every=150, **{"checkpoint.every": 300, "optim.lr": 6e-3,
                                                "sae.sweep_k": (3, 5)})
  out = train_sae.run(c, str(tmp_path), mesh=mesh)
  res = json.load(open(tmp_path / "results.json"))
  assert res["n_saes"] == 2 and [s["k"] for s in res["saes"]] == [3, 5]
  for s in res["saes"]:
    for key in ("architecture", "d_in", "d_sae", "l0", "explained_variance", "mse",
                "dead_fraction"):
      assert key in s
  k3, k5 = res["saes"]
  assert k3["planted_mean_max_cosine"] >= 0.9
  assert 2.0 <= k3["l0"] <= 4.0 and k5["l0"] > k3["l0"]
  assert k5["explained_variance"] > k3["explained_variance"] > 0.6
  ext = sae_io.load_saelens(str(tmp_path / "export" / "sae_1"))
  assert ext.architecture == "topk" and ext.k == 5
  assert all(os.path.getsize(f) > 0 for f in out["figures"])


def test_exact_resumption_batchtopk(tmp_path):
  """Kill (SIGTERM) mid-run, rerun: equals the uninterrupted run bit for bit, including the
  dead-latent counters, the threshold EMA, the normalisation scalar and the data position."""
  mesh = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
  c = _cfg("batchtopk", steps=10, log_every=1, batch_size=64,
           **{"checkpoint.every": 100, "sae.dead_tokens": 128, "optim.warmup_steps": 2})
  src, cfg = train_sae.validate(c, None)
  task = sae_stage.make_task(c, src, cfg, mesh)
  full = loop.train(task, c, str(tmp_path / "full"), mesh=mesh)
  part = str(tmp_path / "part")

  def kill(step, _):
    if step == 5:
      os.kill(os.getpid(), signal.SIGTERM)

  with pytest.raises(loop.Preempted):
    loop.train(task, c, part, mesh=mesh, on_metrics=kill)
  resumed = loop.train(sae_stage.make_task(c, src, cfg, mesh), c, part, mesh=mesh)
  assert resumed.resumed_from is not None and 5 <= resumed.resumed_from < 10
  a, b = jax.device_get((full.state, resumed.state))
  assert int(b.step) == 10
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert float(b.aux["threshold"][0]) > 0 and np.any(b.aux["tokens_since_fired"] > 0)
  assert float(b.aux["norm_scale"][0]) != 1.0


@pytest.mark.parametrize("over,msg", [
    ({"sae.architecture": "gated"}, "architecture='gated'"),
    ({"sae.d_in": 16}, "sae.d_in=16 does not match the data's d_in=32"),
    ({"sae.k": 0}, "sae.k=0"),
    ({"sae.k": 100}, "sae.k=100"),
    ({"sae.sparsity_coef": -0.5}, "sparsity_coef=-0.5"),
    ({"mesh.data": 2, "mesh.model": 4, "sae.d_sae": 66}, "model axis 4 does not divide d_sae=66"),
    ({"data.kind": "activation_cache", "data.path": "/nonexistent"}, "no manifest.json"),
    ({"data.kind": "chunked"}, "data.kind='chunked'"),
    ({"sae.d_sae": -1}, "sae.d_sae=-1"),
])
def test_bad_config_fails_before_compute(over, msg, tmp_path):
  with pytest.raises(ConfigError, match=msg) as e:
    train_sae.validate(_cfg("topk", **over), str(tmp_path))
  assert "\n" not in str(e.value)


def test_lm_source_end_to_end(tmp_path):
  """data.kind='lm': activations computed on the fly by the fixture GPT-2 (random weights, HF
  parity-tested) over the embedded corpus; the run writes results for the model's width."""
  fixture = os.path.join(os.path.dirname(__file__), "fixtures", "lm", "gpt2")
  mesh = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
  c = _cfg("topk", steps=6, log_every=3, batch_size=64, norm_sample_tokens=128,
           **{"optim.warmup_steps": 2, "checkpoint.every": 6, "eval.tokens": 128, "eval.batch_size": 64,
              "data.kind": "lm", "data.path": fixture, "data.hookpoint": "blocks.1.resid_post",
              "data.seq_len": 16, "data.corpus": "default:3", "sae.d_sae": 32, "sae.k": 4})
  train_sae.run(c, str(tmp_path), mesh=mesh)
  res = json.load(open(tmp_path / "results.json"))
  s = res["saes"][0] if "saes" in res else res
  assert s["d_in"] == 32 and np.isfinite(s["explained_variance"])


def _launch_sae(workdir, store, *extra, devices=8):
  cmd = [sys.executable, "-m", "launch.train_sae", "--config=configs/sae.py:topk",
         f"--workdir={workdir}", "--config.data.kind=activation_cache",
         f"--config.data.path={store}",
         "--config.steps=20", "--config.checkpoint.every=10", "--config.log_every=10",
         "--config.optim.warmup_steps=5", "--config.batch_size=64", "--config.eval.tokens=256",
         "--config.eval.batch_size=64", "--config.norm_sample_tokens=256",
         "--config.mesh.data=4", "--config.mesh.model=2", *extra]
  return subprocess.Popen(cmd, cwd=REPO, env=cpu_env(devices), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def test_two_hosts_each_reading_their_rows_equal_one_host(tmp_path):
  """jax.distributed on localhost, 2 processes x 4 CPU devices (mesh 4 data x 2 model), each
  host reading only its rows of every batch from an activation cache (Task.local_batch), against
  1 process x 8 devices reading whole batches: the same exported SAE."""
  from safetensors.numpy import load_file
  from jaxcode.data import activations
  x = np.random.default_rng(3).standard_normal((600, 16)).astype(np.float32)
  store = activations.write_arrays(str(tmp_path / "cache"), {"h": x}, 250)
  p = _launch_sae(tmp_path / "one", store)
  _, err = p.communicate(timeout=300)
  assert p.returncode == 0, err
  port = free_port()
  procs = [_launch_sae(tmp_path / "two", store, "--config.distributed.enabled=True",
                       f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                       "--config.distributed.num_processes=2",
                       f"--config.distributed.process_id={i}", devices=4) for i in range(2)]
  for q in procs:
    _, err = q.communicate(timeout=300)
    assert q.returncode == 0, err
  def weights(wd):
    (f,) = [os.path.join(r, n) for r, _, ns in os.walk(wd / "export") for n in ns
            if n == "sae_weights.safetensors"]
    return load_file(f)
  a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_d_sae_zero_is_twice_the_data_width_and_the_stage_takes_a_block_as_is(tmp_path):
  """One meaning of sae.d_sae=0 (2 x d_in, from the source) for every entry point; the stage
  trains from an embedding experiment's block (the atlas's sae_train) and a source built by
  the caller, with no field rewritten, and reuses its complete folder."""
  from configs import atlas as atlas_configs
  from jaxcode.data import sources
  from jaxcode.pipeline import sae as sae_stage
  src, cfg = train_sae.validate(_cfg("topk", **{"sae.d_sae": 0}), None)
  assert cfg.d_sae == 2 * src.d_in == 64
  t = atlas_configs.get_config("tiny").sae_train
  with t.unlocked():
    t.sae.d_sae, t.steps, t.checkpoint.every, t.optim.warmup_steps = 0, 4, 4, 1
    t.eval.tokens, t.eval.batch_size, t.norm_sample_tokens, t.batch_size = 64, 32, 64, 32
  x = np.random.default_rng(0).standard_normal((256, 12)).astype(np.float32)
  assert sae_stage.validate(t, 12, where="sae_train.").d_sae == 24
  mesh = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
  out = sae_stage.train_saes(t, str(tmp_path), sources.ArraySource(x), mesh)
  assert out["d_sae"] == 24 and out["saes"][0]["k"] == t.sae.k and "figures" not in out
  assert sae_io.load_saelens(str(tmp_path / "export" / "sae")).d_sae == 24
  assert sae_stage.train_saes(t, str(tmp_path), sources.ArraySource(x), mesh) == out
  with pytest.raises(ConfigError, match=rf"^sae_train\.sae\.k={t.sae.k}: expected 0 < k <= "
                     r"d_sae=2$"):
    sae_stage.validate(t, 1, where="sae_train.")
