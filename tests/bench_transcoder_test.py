"""The transcoder benchmark (configs/bench/transcoder.py:cpu_dry) end to end through
launch.benchmark on 8 fake CPU devices: finite positive ratios under the expected keys, the
table, and one-line reasons for what it skips. Speed is never asserted."""

import json
import math
import os
import subprocess
import sys

import pytest

from jaxcode.bench import all as bench_all

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPECTED = (
    "relu_fraction_of_matmul", "relu_fraction_of_matmul_by_cpu_time",
    "topk_dense_fraction_of_matmul_dense_count", "topk_sparse_fraction_of_matmul_dense_count",
    "topk_sparse_fraction_of_matmul_work_count",
    "topk_sparse_fraction_of_matmul_work_count_by_cpu_time",
    "topk_dense_over_relu", "topk_sparse_over_relu",
    "clt.clt_over_sum_of_per_layer", "clt.clt_over_sum_of_per_layer_by_cpu_time",
    "clt.clt_over_per_layer_stack", "memory.param_fraction_on_device0",
    "memory.train_state_fraction_on_device0", "memory.step_bytes_per_device_over_one_device")
PEER_RATIOS = ("saelens_topk_over_ours", "saelens_relu_over_ours",
               "sparsify_topk_transcoder_over_ours", "saelens_topk_over_encoder_matmul")


def _launch(tmp_path, devices: int, peer: str = ""):
  env = dict(os.environ)
  env.pop("JAX_NUM_CPU_DEVICES", None)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
  # the dry run checks the plumbing, not speed: XLA's cheapest CPU compile halves its time
  flags += ["--xla_backend_optimization_level=0",
            f"--xla_force_host_platform_device_count={devices}"]
  env.update(XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu", JAXCODE_PEER_PYTHON=peer)
  out = tmp_path / "transcoder.json"
  r = subprocess.run([sys.executable, "-m", "launch.benchmark",
                      "--config=configs/bench/transcoder.py:cpu_dry", f"--out={out}"],
                     cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  return json.loads(out.read_text()), r.stdout


def test_cpu_dry_run_on_eight_devices(tmp_path):
  res, stdout = _launch(tmp_path, 8)
  got = bench_all.ratios(res)
  missing = [k for k in EXPECTED if k not in got]
  assert not missing, missing
  assert all(math.isfinite(v) and v > 0 for v in got.values()), got
  m = res["memory"]
  assert m["param_bytes_device0"] < m["param_bytes_total"]
  assert res["clt"]["path"] in ("sparse", "dense") and res["topk_faster_path"] in (
      "sparse", "dense")
  assert res["peers"]["skipped"].startswith("no peer interpreter")
  assert "clt_over_sum_of_per_layer" in stdout and "(d) peers" in stdout


def test_skips_are_one_line_reasons(tmp_path):
  from configs.bench import transcoder as transcoder_config
  from jaxcode.bench import transcoder
  cfg = transcoder_config.get_config("cpu_dry")
  cfg.clt.model_devices, cfg.peer_python = 16, "/nonexistent/python"
  out = {}
  transcoder.clt_memory(cfg, out)
  assert out["memory"]["skipped"].startswith("the per-device share needs 16 devices, this "
                                             "process has 8")
  transcoder.peers(cfg, out)
  assert out["peers"]["skipped"].startswith("FileNotFoundError")
  broken = tmp_path / "python"                        # a peer interpreter that fails
  broken.write_text("#!/bin/sh\necho 'first line' >&2\necho 'ImportError: no torch' >&2\n"
                    "exit 3\n")
  broken.chmod(0o755)
  cfg.peer_python = str(broken)
  transcoder.peers(cfg, out)
  assert out["peers"]["skipped"].endswith("peers_torch.py failed: ImportError: no torch")
  assert all("\n" not in v["skipped"] for v in (out["memory"], out["peers"]))


@pytest.mark.skipif(not os.environ.get("JAXCODE_PEER_PYTHON"),
                    reason="JAXCODE_PEER_PYTHON (a Python with torch and sae_lens) is not set")
def test_peers_at_tiny_sizes(tmp_path):
  res, _ = _launch(tmp_path, 1, peer=os.environ["JAXCODE_PEER_PYTHON"])
  p = res["peers"]
  assert "skipped" not in p, p
  for name in PEER_RATIOS:
    if name.split("_over_")[0] not in p["skipped_peers"]:
      assert math.isfinite(p[name]) and p[name] > 0, (name, p)
