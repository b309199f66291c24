"""Launch scripts as a user runs them: every input error is one line `error: ...` on stderr,
exit 2, before any compute and with no workdir left behind; --help on every launch script
prints its purpose, launch line and variants. Checks that need no process are direct calls."""

import glob
import importlib
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from configs._train import default_train_config

from configs import atlas as atlas_configs
from configs import neuromfa as neuromfa_configs
from configs import sae as sae_configs
from configs import superposition as superposition_configs
from jaxcode.experiments import atlas, neuromfa, superposition, train_sae
from jaxcode.errors import ConfigError
from jaxcode.train import optim
from launch_util import REPO, cpu_env

LAUNCHES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "launch", "*.py"))
                  if not p.endswith("__init__.py"))


def _launch(name, *args, timeout=120):
  r = subprocess.run([sys.executable, "-m", f"launch.{name}", *args], cwd=REPO, env=cpu_env(1),
                     capture_output=True, text=True, timeout=timeout)
  return r.returncode, r.stdout, r.stderr


def _refused(workdir, name, *args):
  """The one stderr line of a refused launch, after checking it refused cleanly."""
  rc, out, err = _launch(name, f"--workdir={workdir}", *args)
  lines = [l for l in err.splitlines() if l.strip()]
  assert rc == 2, err[-2000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
  assert "\\" not in lines[0], lines[0]          # no escaped quotes
  assert not os.path.exists(workdir), os.listdir(workdir)
  return lines[0]


@pytest.fixture(scope="module")
def npy_files(tmp_path_factory):
  d = tmp_path_factory.mktemp("npy")
  np.save(d / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
  return d


CASES = {   # id: (launch, arguments, what the line must contain)
    "unknown_variant": ("superposition", ["--config=configs/superposition.py:tinyy"],
                        ["--config=configs/superposition.py:tinyy", "variant 'tinyy'",
                         "seed40, feature_geometry, phase, tiny"]),
    "missing_config_file": ("superposition", ["--config=configs/no_such.py"],
                            ["configs/no_such.py does not exist"]),
    "config_is_a_directory": ("superposition", ["--config=configs"],
                              ["--config=configs: configs is a directory", "configs/atlas.py"]),
    # no --config: the default is loaded with the override, still one line
    "unknown_field": ("superposition", ["--config.optim.lrr=0.1"],
                      ["unknown config field --config.optim.lrr=0.1: did you mean "
                       "--config.optim.lr?"]),
    "array_npy_missing": ("train_sae", ["--config=configs/sae.py:topk",
                                        "--config.data.kind=array_npy",
                                        "--config.data.path={npy}/missing.npy"],
                          ["data.path=", "missing.npy", "no such file"]),
    "array_npy_pickled": ("train_sae", ["--config=configs/sae.py:topk",
                                        "--config.data.kind=array_npy",
                                        "--config.data.path={npy}/objects.npy"],
                          ["objects.npy", "not a .npy array", "never loaded"]),
    "q_step_zero": ("neuromfa", ["--config=configs/neuromfa.py:tiny", "--config.q_step=0"],
                    ["step 0.0", "q_step > 0"]),
    "lr_nan": ("superposition", ["--config=configs/superposition.py:tiny", "--config.optim.lr=nan"],
               ["optim.lr=nan", "finite"]),
    "norm_sample_tokens_zero": ("train_sae", ["--config=configs/sae.py:topk",
                                              "--config.norm_sample_tokens=0"],
                                ["norm_sample_tokens=0", ">= 1"]),
    "eval_tokens_zero": ("train_sae", ["--config=configs/sae.py:topk", "--config.eval.tokens=0"],
                         ["eval.tokens=0", ">= 2"]),
    # the relu step is unstable: refused before the linear and erf chains train
    "unstable_step_size": ("coding_schemes", ["--config=configs/coding_schemes.py:toy",
                                              "--config.sampling.step_size.relu=0.05"],
                           ["step_size=0.05 for relu", ">= 2"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_input_error_is_one_line_before_compute(case, tmp_path, npy_files):
  name, args, want = CASES[case]
  line = _refused(tmp_path / "w", name, *[a.format(npy=npy_files) for a in args])
  for w in want:
    assert w in line, line


@pytest.mark.parametrize("name", LAUNCHES)
def test_help_prints_purpose_variants_and_launch_line(name):
  rc, out, err = _launch(name, "--help" if name != "neuromfa" else "-h")
  assert rc == 0, err[-2000:]
  assert f"python -m launch.{name} --config=configs/" in out, out
  if name == "benchmark":   # no default config: the benchmark configs, one line each
    for path in glob.glob(os.path.join(REPO, "configs", "bench", "[!_]*.py")):
      assert f"configs/bench/{os.path.basename(path)} " in out, out
    return
  with open(os.path.join(REPO, "launch", f"{name}.py")) as f:   # its default config file
    default = re.search(r'^CONFIG = "configs/(\w+)\.py"', f.read(), re.M).group(1)
  module = importlib.import_module(f"configs.{default}")
  lines = out.splitlines()
  for variant, description in module.VARIANTS.items():
    assert any(l.split()[:1] == [variant] and l.endswith(description) for l in lines), out
  for field, _ in module.COMMON_OVERRIDES:
    assert f"--config.{field}=" in out, out


# ------------------------------------------------------------ the same checks, called directly

def test_k_limit_agrees_between_train_sae_and_atlas(tmp_path):
  """k <= d_sae everywhere: k = d_sae passes both, k = d_sae + 1 fails both with one message."""
  c = sae_configs.get_config("topk")
  with c.unlocked():
    c.sae.d_sae, c.sae.k = 16, 16
  train_sae.validate(c, None)
  a_cfg = atlas_configs.get_config("tiny")
  t = a_cfg.sae_train
  with t.unlocked():
    t.sae.d_sae, t.sae.k = 16, 16
  a_cfg.estimates.hi = 12
  a_cfg.lobes.cluster_counts = (2, 3)
  atlas.validate(a_cfg)                    # the atlas validates through the SAE stage
  with c.unlocked():
    c.sae.k = 17
  with pytest.raises(ConfigError) as a:
    train_sae.validate(c, None)
  with t.unlocked():
    t.sae.k = 17
  with pytest.raises(ConfigError) as b:
    atlas.validate(a_cfg)
  assert str(a.value) == "sae.k=17: expected 0 < k <= d_sae=16"
  assert str(b.value) == "sae_train.sae.k=17: expected 0 < k <= d_sae=16"


@pytest.mark.parametrize("field, value, match", [
    ("lr", math.inf, r"optim.lr=inf: expected a finite number > 0"),
    ("lr", 0.0, r"optim.lr=0.0: expected a finite number > 0"),
    ("b1", math.nan, r"optim.b1=nan: expected a finite number in \[0, 1\)"),
    ("b2", 1.0, r"optim.b2=1.0"),
    ("eps", -1.0, r"optim.eps=-1.0"),
    ("weight_decay", math.nan, r"optim.weight_decay=nan"),
    ("clip_norm", math.nan, r"optim.clip_norm=nan"),
    ("final_lr_fraction", -0.5, r"optim.final_lr_fraction=-0.5"),
])
def test_optimizer_values_must_be_finite_and_in_range(field, value, match):
  c = default_train_config().optim
  c.name = "adamw"
  c[field] = value
  with pytest.raises(ConfigError, match=match):
    optim.make_optimizer(c, 100)


@pytest.mark.parametrize("q_min, q_max, q_step, match", [
    (-3.0, 3.0, 0.0, "q_step > 0"),
    (-3.0, 3.0, math.nan, "q_step > 0"),
    (3.0, -3.0, 0.1, "q_min <= q_max"),
    (-3.0, 3.0, 1e-300, "more than 10000 q values"),
])
def test_neuromfa_q_grid(q_min, q_max, q_step, match, tmp_path):
  c = neuromfa_configs.get_config("tiny")
  c.q_min, c.q_max, c.q_step = q_min, q_max, q_step
  with pytest.raises(ConfigError, match=match):
    neuromfa.validate(c, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def test_superposition_values_checked_before_the_workdir(tmp_path):
  c = superposition_configs.get_config("tiny")
  c.toy.sparsities = ("a", "b")    # what --config.toy.sparsities=ab gives
  with pytest.raises(ConfigError, match=r"toy.sparsities contains 'a': expected numbers"):
    superposition.validate(c, str(tmp_path / "w"))
  c = superposition_configs.get_config("tiny")
  c.toy.importance_decay = math.nan
  with pytest.raises(ConfigError, match=r"toy.importance_decay=nan"):
    superposition.validate(c, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def test_array_npy_needs_a_numeric_matrix(tmp_path):
  from jaxcode.data import sources
  np.save(tmp_path / "vec.npy", np.zeros(5))
  np.save(tmp_path / "str.npy", np.array([["a", "b"]]))
  np.savez(tmp_path / "arc.npz", x=np.zeros((3, 3)))
  (tmp_path / "text.npy").write_text("not an array")
  c = sae_configs.get_config("topk").data
  with c.unlocked():
    c.kind = "array_npy"
  for name, match in (("vec.npy", r"shape \(5,\)"), ("str.npy", "<U1 array"),
                      ("arc.npz", "an .npz archive"), ("text.npy", "never loaded"),
                      ("", "data.path='': empty")):
    c.path = str(tmp_path / name) if name else ""
    with pytest.raises(ConfigError, match=match):
      sources.from_config(c)
  np.save(tmp_path / "ok.npy", np.ones((4, 3), np.float16))
  c.path = str(tmp_path / "ok.npy")
  assert sources.from_config(c).d_in == 3


@pytest.mark.parametrize("module", [superposition_configs, sae_configs, atlas_configs,
                                    neuromfa_configs])
def test_unknown_variant_lists_the_known_ones(module):
  with pytest.raises(ValueError, match="expected one of " + ", ".join(module.VARIANTS)):
    module.get_config("no_such_variant")
