"""Runs one benchmark and prints the ratios it measured in the same run.

python -m launch.benchmark --config=configs/bench/<name>.py[:VARIANT] [--out=FILE.json]
python -m launch.benchmark --config=configs/bench/all.py[:cpu_dry]   (every benchmark: one table)
"""

import importlib
import json
import os

from jaxcode import cli

from absl import app, flags
from ml_collections import config_flags

CONFIG = "configs/bench"   # no default: --help lists the benchmark configs in this folder
_CONFIG = config_flags.DEFINE_config_file("config", None, "Benchmark config.", lock_config=True)
_OUT = flags.DEFINE_string("out", None, "Optional JSON file for the measured numbers.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cfg = _CONFIG.value
  module = importlib.import_module(f"jaxcode.bench.{cfg.benchmark}")
  result = module.run(cfg)
  summary = getattr(module, "summary", None)   # a module with a summary prints it, else JSON
  print(summary(result) if summary else json.dumps(result, indent=2, sort_keys=True))
  if _OUT.value:
    tmp = _OUT.value + ".tmp"
    with open(tmp, "w") as f:
      json.dump(result, f, indent=2, sort_keys=True)
    os.replace(tmp, _OUT.value)


if __name__ == "__main__":
  cli.app_run(main, CONFIG)
