"""Activation-cache integrity where the data is read: a flipped byte or a truncated chunk is a
one-line ConfigError naming the file (the library reader and the train_sae launch), a file is
hashed once per process, and the extraction rerun recomputes a damaged chunk bit for bit.

Reference: the sha256 the manifest recorded when the chunk was written; the rerun repeats the
same computation, so its file must equal the original byte for byte.
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jaxcode.data import activations
from jaxcode.data.activations import ActivationCache, extract
from jaxcode.data.corpus import pack
from jaxcode.models.lm import load_pretrained
from jaxcode.errors import ConfigError
from launch_util import REPO, cpu_env

from tests.activations_test import DOCS, FIX, HOOKS   # the same small corpus and model


@pytest.fixture(scope="module")
def made(tmp_path_factory):
  """A small complete cache (several chunks) and what made it."""
  lm = load_pretrained(os.path.join(FIX, "gpt2"))
  packed = pack(DOCS, lm.tokenizer, seq_len=6)
  d = str(tmp_path_factory.mktemp("cache") / "orig")
  _extract(lm, packed, d)
  return dict(lm=lm, packed=packed, dir=d)


def _extract(lm, packed, d):
  return extract(lm, packed, HOOKS, d, batch_size=2, rows_per_chunk=4, progress=False)


@pytest.fixture
def cache_dir(made, tmp_path, monkeypatch):
  """A fresh copy of the cache, read as by a new process (nothing verified yet)."""
  monkeypatch.setattr(activations, "_VERIFIED", set())
  d = str(tmp_path / "cache")
  shutil.copytree(made["dir"], d)
  return d


def _chunk_path(d, hook, i):
  return os.path.join(d, activations.hook_dir(hook), f"chunk_{i:05d}.npy")


def _flip_data_byte(path):
  """Flips the lowest bit of the first byte after the .npy header (an activation value)."""
  nbytes = np.load(path, mmap_mode="r").nbytes
  off = os.path.getsize(path) - nbytes
  with open(path, "r+b") as f:
    f.seek(off)
    b = f.read(1)[0]
    f.seek(off)
    f.write(bytes([b ^ 1]))


def _one_line_naming(err, path):
  msg = str(err.value)
  assert path in msg and "\n" not in msg
  assert "sha256" in msg or "missing" in msg
  assert "rerun the extraction" in msg


def test_flipped_byte_is_an_error_naming_the_file(cache_dir):
  cache = ActivationCache.open(cache_dir)
  assert len(cache.chunks) >= 3
  bad = _chunk_path(cache_dir, HOOKS[1], 1)
  _flip_data_byte(bad)
  np.testing.assert_array_equal(cache.get(HOOKS[0], np.arange(cache.n_tokens)),
                                ActivationCache.open(cache_dir).get(HOOKS[0],
                                                                    np.arange(cache.n_tokens)))
  with pytest.raises(ConfigError) as err:
    cache.get(HOOKS[1], np.arange(cache.n_tokens))
  _one_line_naming(err, bad)
  assert cache.verify() == [1] and cache.corrupt_files() == [os.path.relpath(bad, cache_dir)]


def test_truncated_or_missing_chunk_is_a_config_error(cache_dir):
  cache = ActivationCache.open(cache_dir)
  npy = _chunk_path(cache_dir, HOOKS[0], 0)
  with open(npy, "rb") as f:
    data = f.read()
  with open(npy, "wb") as f:
    f.write(data[:-7])
  with pytest.raises(ConfigError) as err:
    cache.get(HOOKS[0], [0])
  _one_line_naming(err, npy)
  npz = os.path.join(cache_dir, "tokens", "chunk_00002.npz")
  with open(npz, "r+b") as f:
    f.truncate(10)
  with pytest.raises(ConfigError) as err:
    cache.token_info(np.arange(cache.n_tokens))
  _one_line_naming(err, npz)
  os.remove(npz)
  with pytest.raises(ConfigError, match="missing") as err:
    ActivationCache.open(cache_dir).token_info(np.arange(cache.n_tokens))
  _one_line_naming(err, npz)


def test_a_file_is_hashed_once_per_process(cache_dir, monkeypatch):
  calls = []
  real = activations.sha256_file
  monkeypatch.setattr(activations, "sha256_file", lambda p: calls.append(p) or real(p))
  a = ActivationCache.open(cache_dir)
  n, everything = len(a.chunks), np.arange(a.n_tokens)
  a.get(HOOKS[0], everything)
  assert len(calls) == n
  a.get(HOOKS[0], everything)
  ActivationCache.open(cache_dir).get(HOOKS[0], everything)   # another reader, same files
  assert len(calls) == n
  a.token_info(everything)
  a.token_info(everything)
  assert len(calls) == 2 * n and len(set(calls)) == 2 * n
  assert a.verify() == []                       # an explicit check hashes everything anew ...
  assert len(calls) == 5 * n
  ActivationCache.open(cache_dir).get(HOOKS[1], everything)   # ... and marks it verified
  assert len(calls) == 5 * n


def test_files_written_by_extract_are_not_rehashed(made, tmp_path, monkeypatch):
  monkeypatch.setattr(activations, "_VERIFIED", set())
  d = str(tmp_path / "new")
  _extract(made["lm"], made["packed"], d)
  calls = []
  monkeypatch.setattr(activations, "sha256_file", lambda p: calls.append(p))
  c = ActivationCache.open(d)
  c.get(HOOKS[1], np.arange(c.n_tokens))
  c.token_info(np.arange(c.n_tokens))
  assert calls == []


def test_extract_rerun_recomputes_a_corrupt_chunk_bit_for_bit(made, cache_dir):
  cache = ActivationCache.open(cache_dir)
  cache.get(HOOKS[1], np.arange(cache.n_tokens))   # verified in this process, then damaged
  bad = _chunk_path(cache_dir, HOOKS[1], 2)
  with open(bad, "rb") as f:
    want = f.read()
  _flip_data_byte(bad)
  info = _extract(made["lm"], made["packed"], cache_dir)
  assert info["computed"] == [2] and info["complete"]
  with open(bad, "rb") as f:
    assert f.read() == want
  assert ActivationCache.open(cache_dir).verify() == []


def test_train_sae_launch_on_a_corrupt_cache_exits_2_with_one_line(cache_dir, tmp_path):
  bad = _chunk_path(cache_dir, HOOKS[0], 0)
  _flip_data_byte(bad)
  cmd = [sys.executable, "-m", "launch.train_sae", "--config=configs/sae.py:topk",
         f"--workdir={tmp_path / 'sae'}", "--config.data.kind=activation_cache",
         f"--config.data.path={cache_dir}", f"--config.data.hookpoint={HOOKS[0]}",
         "--config.steps=2", "--config.optim.warmup_steps=1", "--config.batch_size=8", "--config.eval.tokens=16",
         "--config.eval.batch_size=8", "--config.norm_sample_tokens=100000",
         "--config.sae.d_sae=16"]
  p = subprocess.run(cmd, cwd=REPO, env=cpu_env(1), capture_output=True, text=True,
                     timeout=300)
  assert p.returncode == 2, p.stderr[-3000:]
  assert "Traceback" not in p.stderr
  errors = [l for l in p.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and bad in errors[0] and "sha256" in errors[0], p.stderr[-3000:]


def test_atlas_recomputes_a_corrupt_chunk_instead_of_reusing(tmp_path, monkeypatch, capsys):
  from configs import atlas as atlas_config
  from jaxcode.experiments import atlas
  monkeypatch.setattr(activations, "_VERIFIED", set())
  cfg, wd = atlas_config.get_config("tiny"), str(tmp_path / "atlas")
  atlas.run(cfg, wd, stop_after="extract")
  cache_dir = os.path.join(wd, "extract", "activations")
  bad = _chunk_path(cache_dir, "blocks.1.resid_post", 1)
  with open(bad, "rb") as f:
    want = f.read()
  _flip_data_byte(bad)
  capsys.readouterr()
  atlas.run(cfg, wd, stop_after="extract")
  err = capsys.readouterr().err
  (line,) = [l for l in err.splitlines() if "do not match" in l]
  assert os.path.relpath(bad, cache_dir) in line and "rerunning the extraction" in line
  assert "extract: reused" not in err and "(1 kept, 1 computed" in err
  with open(bad, "rb") as f:
    assert f.read() == want
  calls = []
  real = activations.sha256_file
  monkeypatch.setattr(activations, "_VERIFIED", set())
  monkeypatch.setattr(activations, "sha256_file", lambda p: calls.append(p) or real(p))
  atlas.run(cfg, wd, stop_after="extract")
  assert "atlas: extract: reused" in capsys.readouterr().err
  cache = ActivationCache.open(cache_dir)
  n = len(calls)
  assert n == sum(len(e["sha256"]) for e in cache.chunks)      # each file hashed once ...
  cache.get("blocks.1.resid_post", np.arange(cache.n_tokens))
  cache.token_info(np.arange(cache.n_tokens))
  assert len(calls) == n                                       # ... and not again on reads


def test_a_file_the_manifest_records_no_checksum_for_is_refused(cache_dir):
  import json
  path = os.path.join(cache_dir, activations.MANIFEST)
  man = json.load(open(path))
  rel = os.path.join(activations.hook_dir(HOOKS[0]), "chunk_00000.npy")
  del man["chunks"][0]["sha256"][rel]
  json.dump(man, open(path, "w"))
  with pytest.raises(ConfigError, match="records no sha256") as err:
    ActivationCache.open(cache_dir).get(HOOKS[0], [0])
  _one_line_naming(err, os.path.join(cache_dir, rel))
