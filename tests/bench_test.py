"""Benchmarks: the CPU dry run of configs/bench/all.py end to end, its table and JSON, and how
it records a failing or over-budget benchmark. Speed is never asserted: only that every
benchmark ran and reported finite ratios."""

import ast
import json
import math
import os
import subprocess
import sys
import time

import pytest

from jaxcode.bench import all as bench_all
from jaxcode.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(*args, timeout=60):
  env = dict(os.environ)
  env.pop("JAX_NUM_CPU_DEVICES", None)   # one CPU device, as on a plain machine
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
  # the dry run checks the plumbing, not speed: XLA's cheapest CPU compile halves its time
  env["XLA_FLAGS"] = " ".join(flags + ["--xla_backend_optimization_level=0"])
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run([sys.executable, "-m", "launch.benchmark", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_cpu_dry_run_end_to_end(tmp_path):
  out = tmp_path / "all.json"
  r = _launch("--config=configs/bench/all.py:cpu_dry", f"--out={out}", timeout=400)
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads(out.read_text())
  rows = [l for l in r.stdout.splitlines() if l.startswith("| ")]
  names = list(bench_all.NAMES)
  assert [l.split("|")[1].strip() for l in rows] == ["benchmark", *names, "sharded tests"]
  for p in res["matmul_flops_per_s"].values():
    assert math.isfinite(p) and p > 0
  for name in names:
    b = res["benchmarks"][name]
    assert b["status"] == "ok", (name, b["error"])
    assert b["headline"] and set(b["headline"]) <= set(b["ratios"]), name
    assert all(math.isfinite(v) and v > 0 for v in b["ratios"].values()), (name, b["ratios"])
    assert b["flops_per_s"] > 0 and math.isfinite(b["mfu_float32"] * b["mfu_bfloat16"]), name
  t = res["sharded_tests"]
  assert t["status"] == "ok" and t["counts"]["passed"] == 1, t
  assert res["table"] in r.stdout


def test_help_lists_all_and_its_variants():
  r = _launch("--help")
  assert r.returncode == 0 and "configs/bench/all.py" in r.stdout, r.stdout + r.stderr
  r = _launch("--config=configs/bench/all.py", "--help")
  assert r.returncode == 0 and "cpu_dry" in r.stdout and "budget_s.sae" in r.stdout


def test_failing_benchmark_is_one_line_and_the_rest_run():
  from configs.bench import estimators
  cfg = estimators.get_config("tiny")
  cfg.k_mle = 1                                        # refused before any compute
  row = bench_all.run_one("estimators", cfg, 0.0, {"float32": 1.0, "bfloat16": 2.0})
  assert row["status"] == "error" and row["error"].startswith("ConfigError: k_entropy=1")
  assert "\n" not in row["error"] and row["result"] is None and row["flops_per_s"] is None
  result = {"variant": "x", "device": "cpu", "matmul_flops_per_s": {"float32": 1.0,
                                                                    "bfloat16": 2.0},
            "benchmarks": {"estimators": row},
            "sharded_tests": {"status": "skipped", "reason": "tests.run=False"}}
  table = bench_all.table(result)
  assert "| estimators | error: ConfigError: k_entropy=1" in table
  assert "| sharded tests | skipped (tests.run=False) |" in table


def test_budget_stops_a_benchmark():
  t0 = time.perf_counter()
  with pytest.raises(bench_all.OverBudget, match="0.2 s budget"):
    with bench_all.budget(0.2):
      while time.perf_counter() - t0 < 5:
        pass
  assert time.perf_counter() - t0 < 2


def test_ratios_and_bad_config():
  got = bench_all.ratios({"speedup_vs_numpy": 2.0, "seconds": {"a": 1.0}, "n": 3,
                          "ratios": {"a": 4.0}, "sweeps": {"k/memory": {"speedup": 1.5}},
                          "flag_over_x": True})
  assert got == {"speedup_vs_numpy": 2.0, "ratios.a": 4.0, "sweeps.k/memory.speedup": 1.5}
  from configs.bench import all as all_config
  cfg = all_config.get_config("cpu_dry")
  cfg.benchmarks = ("sae", "nope")
  with pytest.raises(ConfigError, match="nope"):
    bench_all.validate(cfg)


@pytest.mark.parametrize("module", ["all", "common", "estimators", "superposition"])
def test_benchmark_imports_no_experiment_and_no_private_name(module):
  tree = ast.parse(open(os.path.join(REPO, "jaxcode", "bench", f"{module}.py")).read())
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom):
      assert not (node.module or "").startswith(("jaxcode.experiments", "configs")), module
      assert not any(a.name.startswith("_") for a in node.names), module
    elif isinstance(node, ast.Import):
      assert not any(a.name.startswith("jaxcode.experiments") for a in node.names), module
