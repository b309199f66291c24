"""Every benchmark and the sharded tests in one command, one table (ratios, MFU f32 and bf16).

  python -m launch.benchmark --config=configs/bench/all.py --out=/tmp/bench_all.json     (1 GPU, < 9 min)
  python -m launch.benchmark --config=configs/bench/all.py:cpu_dry                        (tiny sizes, CI)

Runs, in one process, the sharded tests on the accelerator (a pytest subprocess with
JAXCODE_TEST_ACCEL=1, first, so they have the device to themselves), the float32 and
bfloat16 matmul rates, then superposition, estimators, neuromfa, sae, transcoder, attribution,
dashboards and extract,
each from its own config file (configs/bench/<name>.py) at the sizes set below, under a soft
per-benchmark wall-time budget. A failing benchmark gets its one-line error in the table and
the others still run. The budgets (budget_s) and the tests' timeout add up to 9 minutes.
The transcoder's PyTorch peers run when JAXCODE_PEER_PYTHON names a Python with torch and
sae_lens; its CLT memory share needs 8 devices (skipped, with the reason, on one).
Each block is the benchmark's whole config: override any field, e.g.
--config.sae.batch=8192, --config.benchmarks='("sae", "extract")', --config.tests.run=False.
"""

import importlib.util
import os

from ml_collections import ConfigDict

VARIANTS = {   # name: what it runs
    "default": "accelerator sizes (one GPU, under 9 minutes) and the sharded tests",
    "cpu_dry": "tiny sizes and one tiny sharded test: under a minute on 2 CPU cores (CI)",
    "tiny": "the same as cpu_dry",
}
COMMON_OVERRIDES = (   # (field, what it sets): shown by --help
    ("benchmarks", "the benchmarks to run, in order"),
    ("budget_s.sae", "soft wall-time budget of one benchmark, seconds (0: none)"),
    ("tests.run", "run the sharded tests first"),
    ("tests.select", "pytest -k expression of the sharded tests"),
    ("matmul_n", "size of the square matmuls that measure the float32 and bfloat16 rates"),
)
NAMES = ("superposition", "estimators", "neuromfa", "sae", "transcoder", "attribution",
         "dashboards", "extract")


def _benchmark_config(name: str, *variant):
  """get_config(*variant) of configs/bench/<name>.py (found beside this file)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"bench_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*variant)


def _accelerator(c: ConfigDict) -> None:
  c.superposition = _benchmark_config("superposition", "default")
  c.superposition.steps = 1000           # ~ms per step on a GPU: enough to time
  c.estimators = _benchmark_config("estimators")   # N = 20,000, d = 64
  c.estimators.repeats = 5
  c.estimators.matmul_n = 8192
  c.neuromfa = _benchmark_config("neuromfa")       # S = 64, 32 blocks (Python reference ~15 s)
  c.sae = _benchmark_config("sae", "gpu")          # batch 4096, matmul 8192, LM-fed sweeps
  c.transcoder = _benchmark_config("transcoder", "gpu")   # batch 4096, CLT 4 x 768 x 16384
  c.attribution = _benchmark_config("attribution", "gpu")   # Gemma 3 270M, 16 tokens
  c.dashboards = _benchmark_config("dashboards", "gpu")     # 16,384 latents, 1M tokens
  c.extract = _benchmark_config("extract")         # MiniLM, 4 batches of 32 x 128
  c.extract.repeats = 5
  c.extract.matmul_n = 8192


def _cpu_dry(c: ConfigDict) -> None:
  c.superposition = _benchmark_config("superposition", "tiny")
  c.estimators = _benchmark_config("estimators", "tiny")
  n = c.neuromfa = _benchmark_config("neuromfa", "small")
  n.S, n.blocks, n.width, n.repeats = 8, 2, 64, 1
  n.path_sources, n.path_block = 32, 16
  s = c.sae = _benchmark_config("sae", "cpu")
  s.d_in, s.d_sae, s.batch, s.k, s.sweep = 64, 512, 256, 8, 2
  s.repeats, s.matmul_n, s.source_rows = 1, 256, 1024
  s.lm_hookpoints, s.lm_repeats = (), 1     # no GPT-2 on the fly
  c.transcoder = _benchmark_config("transcoder", "cpu_dry")
  c.attribution = _benchmark_config("attribution", "cpu_dry")
  c.dashboards = _benchmark_config("dashboards", "cpu_dry")
  e = c.extract = _benchmark_config("extract")
  e.corpus, e.seq_len, e.batch_size, e.n_batches, e.repeats, e.matmul_n = (
      "default:2", 32, 4, 2, 1, 256)


def get_config(variant: str = "default") -> ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
  dry = variant != "default"
  c = ConfigDict()
  c.benchmark = "all"                # jaxcode.bench.all
  c.variant = variant                # written into the result
  c.benchmarks = NAMES               # run in this order; each has its block below
  c.budget_s = ConfigDict(dict(      # soft wall-time budget of each benchmark, s (0: none);
      superposition=40.0, estimators=75.0, neuromfa=60.0, sae=100.0,
      transcoder=50.0, attribution=40.0, dashboards=35.0, extract=50.0))
  if dry:                            # a safety net on a loaded CI machine, not a claim
    for name in NAMES:
      c.budget_s[name] = 120.0
  c.matmul_n = 256 if dry else 8192  # n of the n x n x n float32 / bfloat16 matmul rates
  c.matmul_repeats = 2 if dry else 10   # timed matmuls (median)
  c.tests = ConfigDict(dict(
      run=True,                      # run the sharded tests (JAXCODE_TEST_ACCEL=1) first
      paths=("tests/estimators_spectrum_test.py",) if dry else ("tests",),  # pytest paths
      select=("covariance_sharded_equals_single_device" if dry
              else "sharded or eight or devices"),   # pytest -k expression
      timeout_s=120.0 if dry else 100.0,  # the subprocess is stopped after this
  ))
  (_cpu_dry if dry else _accelerator)(c)
  return c.lock()
