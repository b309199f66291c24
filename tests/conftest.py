"""Test set-up: 8 fake CPU devices before JAX starts, so every sharded path runs.

Set JAXCODE_TEST_ACCEL=1 to run on the machine's accelerator instead (the GPU
checks in BUILD.md); the default is the CPU with 8 devices.
"""

import os
import sys

if os.environ.get("JAXCODE_TEST_ACCEL") != "1":
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["JAX_NUM_CPU_DEVICES"] = "8"
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()

# One BLAS thread per process (set before numpy loads; launched children inherit it): the
# suite runs one xdist worker per core, and OpenBLAS's spinning threads on cores already busy
# made a 384 x 384 eigvalsh take 2 s instead of 6 ms (the four-properties table, PCA, probes).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

if os.environ.get("JAXCODE_TEST_ACCEL") != "1":
  jax.config.update("jax_num_cpu_devices", 8)

from absl import flags as absl_flags  # noqa: E402

if not absl_flags.FLAGS.is_parsed():
  absl_flags.FLAGS(sys.argv[:1])

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
