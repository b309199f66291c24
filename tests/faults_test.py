"""Fault injection: SIGKILL at chosen points (during a checkpoint save, during keep-N deletion,
after the work but before results.json), flipped bytes in a checkpoint, a changed config and
a second process on one workdir. The reference for every resumed run is the same command run
uninterrupted on the same mesh (the same computation repeated: compared bitwise)."""

import json
import os
import shutil
import signal
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcode import workdir as workdir_lib
from jaxcode.errors import ConfigError
from jaxcode.train import checkpoint as ckpt_lib
from jaxcode.train import loop
from configs._train import default_train_config
from tests.launch_util import REPO, cpu_env


def _launch(module, config, workdir, *extra, fault=None, devices=8):
  env = cpu_env(devices)
  env.pop("JAXCODE_FAULT", None)
  if fault:
    env["JAXCODE_FAULT"] = fault
  cmd = [sys.executable, "-m", f"launch.{module}", f"--config={config}",
         f"--workdir={workdir}", *extra]
  p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  return p.returncode, p.stderr


def _drop(x, keys):
  if isinstance(x, dict):
    return {k: _drop(v, keys) for k, v in x.items() if k not in keys}
  if isinstance(x, list):
    return [_drop(v, keys) for v in x]
  return x


def _results(workdir, drop=("figures", "export", "seconds", "tokens_per_s")):
  """results.json without what names the workdir or measures time."""
  with open(os.path.join(workdir, "results.json")) as f:
    return _drop(json.load(f), drop)


def _killed(rc):
  return rc == -signal.SIGKILL


def _killed_then_finished(launch, tmp_path, faults):
  """Runs `launch` uninterrupted into full/, then into cut/ once per fault (each must die by
  SIGKILL), then cut/ to the end; returns (full, cut)."""
  full, cut = tmp_path / "full", tmp_path / "cut"
  rc, err = launch(full)
  assert rc == 0, err
  for fault in faults:
    rc, err = launch(cut, fault=fault)
    assert _killed(rc), (fault, err)
  rc, err = launch(cut)
  assert rc == 0, err
  return full, cut


# ------------------------------------------------------------ superposition, end to end

SUP = ("superposition", "configs/superposition.py:tiny")


def test_superposition_killed_everywhere_resumes_bitwise(tmp_path):
  full, cut = tmp_path / "full", tmp_path / "cut"
  rc, err = _launch(*SUP, full)
  assert rc == 0, err
  # 200 steps, a checkpoint every 50, keep 2. Killed while step 100 is being written:
  rc, err = _launch(*SUP, cut, fault="checkpoint.save:2")
  assert _killed(rc), err
  # ... then while step 50 is being deleted (before the save of step 200):
  rc, err = _launch(*SUP, cut, fault="checkpoint.delete:1")
  assert _killed(rc), err
  assert any(n.startswith("deleting-") for n in os.listdir(cut / "checkpoints"))
  # ... then after training, before results.json:
  rc, err = _launch(*SUP, cut, fault="results:1")
  assert _killed(rc), err
  assert not (cut / "results.json").exists()
  rc, err = _launch(*SUP, cut)
  assert rc == 0, err
  assert "removed incomplete" not in err or "deleting-" in err
  assert sorted(os.listdir(cut / "checkpoints")) == ["150", "200"]
  assert _results(full)["instances"] == _results(cut)["instances"]     # bitwise
  assert _results(full)["final_loss"] == _results(cut)["final_loss"]
  # A rerun of the finished run is a no-op that says where the results are.
  before = os.path.getmtime(cut / "results.json")
  rc, err = _launch(*SUP, cut)
  assert rc == 0 and "already finished" in err and str(cut / "results.json") in err, err
  assert os.path.getmtime(cut / "results.json") == before
  # A changed config that affects results is refused in one line naming the field.
  rc, err = _launch(*SUP, cut, "--config.toy.m=3")
  lines = [l for l in err.strip().splitlines() if l.strip()]
  assert rc == 2 and len(lines) == 1 and "toy.m=2" in lines[0] and "3" in lines[0], err
  # Fields that cannot change results may differ (and a longer constant-lr run extends it).
  rc, err = _launch(*SUP, cut, "--config.log_every=25", "--config.checkpoint.keep=3")
  assert rc == 0 and "already finished" in err, err


def test_second_process_on_a_workdir_is_refused(tmp_path):
  wd = tmp_path / "w"
  os.makedirs(wd)
  with workdir_lib._lock(str(wd)):      # this process holds the workdir
    rc, err = _launch(*SUP, wd, devices=1)
  lines = [l for l in err.strip().splitlines() if l.strip()]
  assert rc == 2 and len(lines) == 1, err
  assert "in use by pid" in lines[0] and str(os.getpid()) in lines[0], err
  assert not (wd / "checkpoints").exists()


# ------------------------------------------------------------ train_sae

SAE_CFG = ("--config.steps=120", "--config.checkpoint.every=40", "--config.log_every=20",
           "--config.eval.tokens=1024", "--config.norm_sample_tokens=512")


def _sae(workdir, fault=None):
  return _launch("train_sae", "configs/sae.py:batchtopk", workdir, *SAE_CFG, fault=fault)


def test_train_sae_killed_during_save_and_before_results_resumes_bitwise(tmp_path):
  full, cut = _killed_then_finished(_sae, tmp_path, ("checkpoint.save:2", "results:1"))
  assert _results(full) == _results(cut)
  for name in os.listdir(full / "export"):
    a = (full / "export" / name / "sae_weights.safetensors").read_bytes()
    b = (cut / "export" / name / "sae_weights.safetensors").read_bytes()
    assert a == b


# ------------------------------------------------------------ extract

GPT2 = os.path.join(REPO, "tests", "fixtures", "lm", "gpt2")
EXTRACT_CFG = (f"--config.model={GPT2}", "--config.corpus=default:2", "--config.seq_len=16",
               "--config.max_tokens=512", "--config.dtype=float32", "--config.batch_size=4",
               "--config.rows_per_chunk=4", "--config.progress=False",
               "--config.hookpoints=('blocks.0.resid_post','blocks.1.mlp_hidden')")


def _extract(workdir, fault=None):
  return _launch("extract", "configs/extract.py:tiny", workdir, *EXTRACT_CFG, fault=fault,
                 devices=1)


def _cache_files(workdir):
  root = os.path.join(workdir, "activations")
  return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
          for d, _, fs in os.walk(root) for f in fs if f.endswith((".npy", ".npz"))}


def test_extract_killed_and_preempted_mid_chunk_resumes_to_the_same_cache(tmp_path):
  full, cut = tmp_path / "full", tmp_path / "cut"
  rc, err = _extract(full)
  assert rc == 0, err
  rc, err = _extract(cut, fault="cache.chunk:2")       # files of chunk 1 written, not listed
  assert _killed(rc), err
  rc, err = _extract(cut, fault="cache.chunk:3:TERM")  # preempted: says so, and how to resume
  lines = [l for l in err.strip().splitlines() if l.strip()]
  assert rc == 143, err
  assert "extraction stopped by signal 15" in lines[-1] and "rerun the same command" in lines[-1]
  rc, err = _extract(cut)
  assert rc == 0, err
  assert _cache_files(full) == _cache_files(cut)       # the same forwards: bitwise
  rc, err = _extract(cut)
  assert rc == 0 and "already finished" in err, err


# ------------------------------------------------------------ coding schemes, emergence

CODING = ("--config.nonlinearities=('erf',)", "--config.steps=80", "--config.log_every=20",
          "--config.checkpoint.every=20", "--config.model.width=16", "--config.data.n_train=8",
          "--config.data.n_test=8", "--config.sampling.n_chains=2", "--config.sampling.beta=1000.0",
          "--config.sampling.burn_in=20", "--config.sampling.thin=20",
          "--config.sampling.n_samples=3", "--config.sampling.step_size.erf=0.001",
          "--config.sampling.check_step_size=False")


def _coding(workdir, fault=None):
  return _launch("coding_schemes", "configs/coding_schemes.py:toy", workdir, *CODING,
                 fault=fault, devices=2)


def test_coding_schemes_killed_during_save_and_deletion_resumes_bitwise(tmp_path):
  full, cut = _killed_then_finished(_coding, tmp_path, ("checkpoint.save:2", "checkpoint.delete:1"))
  assert _results(full)["results"] == _results(cut)["results"]


def _emergence(workdir, fault=None):
  return _launch("emergence", "configs/emergence.py:tiny", workdir, "--config.steps=4",
                 "--config.data.max_docs_per_source=2", fault=fault, devices=1)


def test_emergence_killed_during_save_and_before_results_resumes_bitwise(tmp_path):
  full, cut = _killed_then_finished(_emergence, tmp_path, ("checkpoint.save:2", "results:1"))
  assert _results(full)["table"] == _results(cut)["table"]


# ------------------------------------------------------------ the loop, in process

def _task():
  def init(key):
    return {"w": jnp.zeros((4,)), "b": jnp.ones((3,), jnp.bfloat16)}, {"n": jnp.zeros((), jnp.int32)}

  def loss(params, aux, batch, key, step):
    target = jnp.arange(4.0) + step * 0.01
    l = jnp.sum((params["w"] - target) ** 2) + jnp.sum(params["b"].astype(jnp.float32) ** 2)
    return l, ({"loss_copy": l}, {"n": aux["n"] + 1})

  return loop.Task(init=init, loss=loss)


def _cfg(steps):
  c = default_train_config()
  c.steps, c.log_every, c.checkpoint.every, c.checkpoint.keep = steps, 5, 5, 2
  c.checkpoint.async_save = False
  c.optim.name, c.optim.lr = "sgd", 0.05
  return c


def _flip_a_byte(step_dir):
  d = os.path.join(step_dir, "state", "d")     # the array data orbax reads (ocdbt, merged)
  data = max((os.path.join(d, f) for f in os.listdir(d)), key=os.path.getsize)
  raw = bytearray(open(data, "rb").read())
  raw[len(raw) // 2] ^= 0x01
  open(data, "wb").write(bytes(raw))


def test_flipped_byte_in_newest_checkpoint_falls_back_to_the_previous(tmp_path, capfd):
  ref = loop.train(_task(), _cfg(20), str(tmp_path / "ref"))
  wd = str(tmp_path / "w")
  loop.train(_task(), _cfg(15), wd)
  ckdir = os.path.join(wd, "checkpoints")
  assert ckpt_lib.check_directory(ckdir) == [10, 15]
  _flip_a_byte(os.path.join(ckdir, "15"))
  capfd.readouterr()
  res = loop.train(_task(), _cfg(20), wd)
  err = capfd.readouterr().err
  assert res.resumed_from == 10
  assert "skipped step 15" in err and "resuming from step 10" in err, err
  np.testing.assert_array_equal(np.asarray(res.state.params["w"]),
                                np.asarray(ref.state.params["w"]))    # same computation
  assert int(res.state.aux["n"]) == int(ref.state.aux["n"]) == 20


def test_changed_arrays_are_caught_by_the_saved_fingerprint(tmp_path, capfd):
  """Where the storage layer reads changed bits without complaint (simulated here by changing
  the fingerprint saved beside the arrays), the fingerprint comparison catches it."""
  wd = str(tmp_path / "w")
  loop.train(_task(), _cfg(15), wd)
  meta = os.path.join(wd, "checkpoints", "15", "meta", "metadata")
  m = json.load(open(meta))
  m[ckpt_lib.FINGERPRINT] = "0" * 16
  json.dump(m, open(meta, "w"))
  capfd.readouterr()
  res = loop.train(_task(), _cfg(20), wd)
  err = capfd.readouterr().err
  assert res.resumed_from == 10 and "do not match the fingerprint" in err, err


def test_flipped_byte_with_no_earlier_checkpoint_is_one_line(tmp_path):
  wd = str(tmp_path / "w")
  c = _cfg(5)
  loop.train(_task(), c, wd)
  _flip_a_byte(os.path.join(wd, "checkpoints", "5"))
  with pytest.raises(ConfigError, match=r"corrupt .*checkpoint .*5: .*; no earlier complete"):
    loop.train(_task(), _cfg(10), wd)


def test_fingerprint_sees_one_bit_and_ignores_the_mesh():
  import jax
  from jaxcode import parallel
  x = {"a": jnp.arange(64, dtype=jnp.float32).reshape(8, 8), "k": jax.random.PRNGKey(3)}
  base = ckpt_lib.fingerprint(x)
  y = dict(x, a=x["a"].at[3, 5].set(jax.lax.bitcast_convert_type(
      jax.lax.bitcast_convert_type(x["a"][3, 5], jnp.uint32) ^ jnp.uint32(1 << 7), jnp.float32)))
  assert ckpt_lib.fingerprint(y) != base
  mesh = parallel.make_mesh(2, 4)
  sharded = dict(x, a=jax.device_put(x["a"], parallel.sharding_for(mesh, ("data", "model"))))
  assert ckpt_lib.fingerprint(sharded) == base


def test_half_deleted_and_half_written_step_folders_are_cleaned(tmp_path, capfd):
  wd = str(tmp_path / "w")
  loop.train(_task(), _cfg(15), wd)
  ckdir = os.path.join(wd, "checkpoints")
  # what an orbax keep-N deletion cut off by SIGKILL left (the report) ...
  os.remove(os.path.join(ckdir, "10", "_CHECKPOINT_METADATA"))
  # ... a save cut off before its rename, and one of our own deletions cut off
  shutil.copytree(os.path.join(ckdir, "15"), os.path.join(ckdir, "20.orbax-checkpoint-tmp-7"))
  shutil.copytree(os.path.join(ckdir, "15"), os.path.join(ckdir, "deleting-5"))
  capfd.readouterr()
  res = loop.train(_task(), _cfg(20), wd)
  err = capfd.readouterr().err
  assert res.resumed_from == 15
  assert err.count("removed incomplete") == 3, err
  assert sorted(os.listdir(ckdir)) == ["15", "20"]


def test_nan_guard_says_whether_a_checkpoint_exists(tmp_path):
  from jaxcode.train.metrics import NonFiniteError

  def task(nan_at):
    t = _task()
    def loss(params, aux, batch, key, step):
      l, rest = t.loss(params, aux, batch, key, step)
      return jnp.where(step >= nan_at, jnp.nan, l), rest
    return loop.Task(init=t.init, loss=loss)

  with pytest.raises(NonFiniteError, match="no checkpoint was written yet"):
    loop.train(task(2), _cfg(20), str(tmp_path / "a"))
  with pytest.raises(NonFiniteError, match=r"last good checkpoint \(step 10\) is kept"):
    loop.train(task(12), _cfg(20), str(tmp_path / "b"))


def test_finished_loop_run_restores_its_last_metrics(tmp_path):
  wd = str(tmp_path / "w")
  first = loop.train(_task(), _cfg(10), wd)
  again = loop.train(_task(), _cfg(10), wd)
  assert again.steps_run == 0
  assert float(again.metrics["loss_copy"]) == float(first.metrics["loss_copy"])


def test_progress_rate_counts_only_this_process_steps():
  from jaxcode.train.metrics import Progress
  import time
  p = Progress(total=1000, start=900, enabled=False)
  p.t0 = time.perf_counter() - 10.0     # 10 s in this process
  line = p.report(950)
  rate = float(line.split("  ")[1].split()[0])
  assert 4.5 < rate < 5.5, line          # 50 steps in 10 s, not 950
  assert "ETA 00:1" in line              # 50 steps left at 5/s: about 10 s


# ------------------------------------------------------------ config comparison

def test_first_difference_names_the_field_and_skips_neutral_ones():
  old = {"steps": 100, "optim": {"lr": 1e-3, "schedule": "constant"}, "sae": {"k": 8},
         "log_every": 10, "checkpoint": {"every": 50}, "mesh": {"data": -1}}
  new = json.loads(json.dumps(old))
  new.update(log_every=5, checkpoint={"every": 10}, mesh={"data": 2}, steps=200)
  assert workdir_lib.first_difference(old, new) is None
  assert "steps=100" in workdir_lib.first_difference(old, new, extend=False)
  new["optim"]["schedule"] = "cosine"      # a longer cosine run is another run
  assert workdir_lib.first_difference(old, new).startswith("steps=100")
  new["steps"] = 100
  assert workdir_lib.first_difference(old, new).startswith("optim.schedule='constant'")
  new = json.loads(json.dumps(old))
  new["optim"]["lr"], new["sae"]["k"] = 0.1, 16
  assert workdir_lib.first_difference(old, new).startswith("optim.lr=0.001")
  cos = json.loads(json.dumps(old))
  cos["optim"]["schedule"] = "cosine"
  longer = dict(cos, steps=200)
  assert workdir_lib.first_difference(cos, longer).startswith("steps=100")
