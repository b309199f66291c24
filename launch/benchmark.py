"""Runs one benchmark and prints the ratios it measured in the same run.

python -m launch.benchmark --config=configs/bench/<name>.py[:VARIANT] [--out=FILE.json]
"""

import importlib
import json

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
  print(json.dumps(result, indent=2, sort_keys=True))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(result, f, indent=2, sort_keys=True)


if __name__ == "__main__":
  cli.app_run(main, CONFIG)
