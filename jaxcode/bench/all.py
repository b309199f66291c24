"""Every benchmark in one run, and the sharded tests on the accelerator (configs/bench/all.py).

In this order, so the tests have the accelerator to themselves:
1. the sharded tests (`JAXCODE_TEST_ACCEL=1 python -m pytest -q -k SELECT PATHS`) as a
   subprocess, before this process touches the accelerator; their pass/fail/skip counts;
2. the machine's matmul rates, float32 and bfloat16 (n x n x n, measured here);
3. each benchmark's `run(config[name])` (jaxcode.bench.<name>) at the sizes the variant
   sets, under a soft wall-time budget (SIGALRM: a benchmark still running when it fires
   stops at its next Python instruction); a failing benchmark is recorded with its one-line
   error and the rest still run.

Each row of the table: the benchmark's headline ratios (measured in this run against a
reference implementation or the matmul rate, never absolute times alone), its FLOP/s where
it reports one, and that rate as a fraction of the float32 and of the bfloat16 matmul rate
(MFU f32 / MFU bf16). The float32 rate is XLA's default precision for float32 matmuls on
the device (TF32 tensor cores on recent NVIDIA GPUs). The whole result, every benchmark's
own numbers included, is what `run` returns (--out writes it as JSON).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp

from jaxcode.bench import common
from jaxcode.errors import ConfigError

NAMES = ("superposition", "estimators", "neuromfa", "sae", "transcoder", "attribution",
         "dashboards", "extract")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# benchmark: dotted keys of its headline ratios (absent ones are left out)
HEADLINES = {
    "superposition": ("speedup_vs_numpy",),
    "estimators": ("ratios.sklearn_over_ours_shared", "ratios.sklearn_over_ours_public",
                   "ratios.skdim_over_ours_twonn_mle"),
    "neuromfa": ("paper_speedup_vs_released", "paper_speedup_vs_vectorised"),
    "sae": ("topk_dense_over_dense_relu", "topk_sparse_over_dense_relu",
            "sweeps.topk_k/memory.speedup", "sweeps.relu_coef/memory.speedup"),
    "transcoder": ("relu_fraction_of_matmul", "topk_sparse_fraction_of_matmul_work_count",
                   "clt.clt_over_sum_of_per_layer", "memory.param_fraction_on_device0",
                   "peers.saelens_topk_over_ours", "peers.sparsify_topk_transcoder_over_ours"),
    "attribution": ("vjp_row_over_forward", "graph_over_forward"),
    "dashboards": ("scan_over_forward_encode", "per_pass_over_forward_encode"),
    "extract": ("jax_over_torch", "extract_over_jax_forward"),
}
# benchmark: (dotted key of a rate, operations per unit of it, what is counted)
RATES = {
    "superposition": ("jax_flops_per_s", 1.0, "sweep step matmuls"),
    "estimators": ("distance_flops_per_s", 1.0, "pairwise-distance matmul of the shared search"),
    "neuromfa": ("path_relaxations_per_s_executed", 2.0, "min-plus relaxations (add + min)"),
    "sae": ("dense_flops_per_s", 1.0, "dense ReLU SAE training step"),
    "transcoder": ("relu_flops_per_s", 1.0, "dense ReLU transcoder training step"),
    "attribution": ("row_flops_per_s", 1.0, "attribution rows (frozen backward + contraction)"),
    "dashboards": ("scan_encode_flops_per_s", 1.0, "the scan's SAE encoder matmuls"),
    "extract": ("jax_model_flops_per_s", 1.0, "transformer forward matmuls"),
}


class OverBudget(Exception):
  pass


def one_line(e: BaseException, limit: int = 240) -> str:
  text = f"{type(e).__name__}: {' '.join(str(e).split())}"
  return text if len(text) <= limit else text[:limit - 3] + "..."


def leaf(tree, dotted: str):
  """tree['a']['b/c'] for 'a.b/c'; None when a key is absent."""
  for part in dotted.split("."):
    if not isinstance(tree, dict) or part not in tree:
      return None
    tree = tree[part]
  return tree


def ratios(result, prefix: str = "") -> dict:
  """Every number of a result whose name says it is a ratio ('speedup', '_over_',
  'fraction', or under 'ratios'), by dotted name."""
  out = {}
  for k, v in (result or {}).items():
    name = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(ratios(v, f"{name}."))
    elif (isinstance(v, (int, float)) and not isinstance(v, bool) and
          re.search(r"speedup|_over_|fraction|^ratios\.", name)):
      out[name] = float(v)
  return out


@contextlib.contextmanager
def budget(seconds: float):
  """Raises OverBudget in the main thread once `seconds` have passed (0: no budget)."""
  if seconds <= 0 or threading.current_thread() is not threading.main_thread():
    yield
    return

  def fire(signum, frame):
    raise OverBudget(f"over the {seconds:g} s budget")

  previous = signal.signal(signal.SIGALRM, fire)
  signal.setitimer(signal.ITIMER_REAL, seconds)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------ the sharded tests

def sharded_tests(config) -> dict:
  """Runs the selected tests on the accelerator in a subprocess; their counts."""
  if not config.tests.run:
    return {"status": "skipped", "reason": "tests.run=False"}
  paths = [os.path.join(REPO, p) for p in config.tests.paths]
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    return {"status": "skipped", "reason": f"not found: {', '.join(missing)}"}
  cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *paths,
         "-k", config.tests.select]
  env = dict(os.environ, JAXCODE_TEST_ACCEL="1")
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=float(config.tests.timeout_s))
  except subprocess.TimeoutExpired:
    return {"status": "error", "error": f"over the {config.tests.timeout_s:g} s budget",
            "wall_s": time.perf_counter() - t0}
  lines = (proc.stdout + proc.stderr).strip().splitlines()
  counts = {k: int(n) for n, k in re.findall(
      r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)", lines[-1]
      if lines else "")}
  out = {"status": "ok" if proc.returncode == 0 else "failed", "returncode": proc.returncode,
         "counts": counts, "wall_s": time.perf_counter() - t0,
         "command": f"JAXCODE_TEST_ACCEL=1 python -m pytest -q {' '.join(config.tests.paths)} "
                    f"-k {config.tests.select!r}"}
  if proc.returncode != 0:
    out["failures"] = [l for l in lines if l.startswith(("FAILED", "ERROR"))][:20]
    out["error"] = lines[-1] if lines else f"exit {proc.returncode}"
  return out


# ------------------------------------------------------------------ the benchmarks

def matmul_rates(n: int, repeats: int) -> dict:
  return {name: common.matmul_flops_per_s(n, dtype, repeats)
          for name, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16))}


def run_one(name: str, cfg, budget_s: float, peaks: dict) -> dict:
  """One benchmark under its budget: status, wall seconds, headline ratios, FLOP/s, MFU."""
  t0 = time.perf_counter()
  row = {"status": "ok", "error": None}
  try:
    with budget(budget_s):
      result = importlib.import_module(f"jaxcode.bench.{cfg.benchmark}").run(cfg)
  except Exception as e:  # recorded; the other benchmarks still run
    result, row["status"], row["error"] = None, "error", one_line(e)
  row["wall_s"] = time.perf_counter() - t0
  row["headline"] = {k: float(leaf(result, k)) for k in HEADLINES.get(name, ())
                     if isinstance(leaf(result, k), (int, float))}
  row["ratios"] = ratios(result)
  key, ops, what = RATES.get(name, (None, 1.0, None))
  rate = leaf(result, key) if key else None
  row["flops_per_s"] = ops * float(rate) if isinstance(rate, (int, float)) else None
  row["flops_counted"] = what if row["flops_per_s"] is not None else None
  for dtype, peak in peaks.items():
    row[f"mfu_{dtype}"] = row["flops_per_s"] / peak if row["flops_per_s"] and peak else None
  row["result"] = result
  gc.collect()
  jax.clear_caches()
  return row


def validate(config) -> list[str]:
  names = list(config.benchmarks)
  unknown = [n for n in names if n not in NAMES]
  if unknown or not names:
    raise ConfigError(f"benchmarks={names}: expected a non-empty subset of {NAMES}")
  for n in names:
    if n not in config or n not in config.budget_s or float(config.budget_s[n]) < 0:
      raise ConfigError(f"benchmarks has {n!r}: expected a config block {n} and "
                        f"budget_s.{n} >= 0 (0: none)")
  if int(config.matmul_n) <= 0 or int(config.matmul_repeats) <= 0:
    raise ConfigError(f"matmul_n={config.matmul_n}, matmul_repeats={config.matmul_repeats}: "
                      "expected positive integers")
  return names


def run(config) -> dict:
  names = validate(config)
  out = {"benchmark": "all", "variant": config.variant}
  out["sharded_tests"] = sharded_tests(config)     # before this process takes the device
  out["device"] = common.device_summary()
  out["matmul_flops_per_s"] = matmul_rates(int(config.matmul_n), int(config.matmul_repeats))
  out["benchmarks"] = {}
  for name in names:
    print(f"benchmark {name} ...", file=sys.stderr, flush=True)
    out["benchmarks"][name] = run_one(name, config[name], float(config.budget_s[name]),
                                      out["matmul_flops_per_s"])
  out["table"] = table(out)
  return out


# ------------------------------------------------------------------ the table

def _num(v, digits: int = 3) -> str:
  if v is None:
    return "–"
  if not math.isfinite(v):
    return str(v)
  return f"{v:.{digits}g}"


def _label(dotted: str) -> str:
  """'sweeps.topk_k/memory.speedup' -> 'sweep topk_k/memory'; 'ratios.a_over_b' -> 'a_over_b'."""
  parts = dotted.split(".")
  return f"sweep {parts[1]}" if parts[0] == "sweeps" else parts[-1]


def _rows(result: dict) -> list[list[str]]:
  rows = []
  for name, r in result["benchmarks"].items():
    head = ", ".join(f"{_label(k)} {_num(v)}" for k, v in r["headline"].items())
    rows.append([name, r["status"] if not r["error"] else f"error: {r['error']}",
                 f"{r['wall_s']:.1f}", head or "–", _num(r["flops_per_s"]),
                 _num(r.get("mfu_float32")), _num(r.get("mfu_bfloat16"))])
  t = result["sharded_tests"]
  counts = ", ".join(f"{n} {k}" for k, n in t.get("counts", {}).items())
  status = t["status"] if t["status"] != "skipped" else f"skipped ({t['reason']})"
  rows.append(["sharded tests", status + (f": {t['error']}" if t.get("error") else ""),
               f"{t['wall_s']:.1f}" if "wall_s" in t else "–", counts or "–", "–", "–", "–"])
  return rows


def table(result: dict) -> str:
  """The markdown table of a run (one row per benchmark, one for the sharded tests)."""
  peaks = result["matmul_flops_per_s"]
  head = ["benchmark", "status", "wall s", "ratios (this run)", "FLOP/s", "MFU f32", "MFU bf16"]
  lines = [f"device: {result['device']}; matmul FLOP/s float32 {_num(peaks['float32'])}, "
           f"bfloat16 {_num(peaks['bfloat16'])} (variant {result['variant']})", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |"
            for row in _rows(result)]
  return "\n".join(lines)


def summary(result: dict) -> str:
  """What launch.benchmark prints: the table."""
  return result["table"]
