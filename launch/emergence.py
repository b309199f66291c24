"""Offline emergence demonstration: train a small GPT-2, NeuroMFA E(t) beside its null.

python -m launch.emergence --config=configs/emergence.py --workdir=DIR
"""

from jaxcode import cli

CONFIG = "configs/emergence.py"   # the default --config

if __name__ == "__main__":
  cli.launch_experiment("emergence", CONFIG)
