"""Toy models of superposition.

python -m launch.superposition --config=configs/superposition.py:seed40 --workdir=DIR
"""

from jaxcode import cli

CONFIG = "configs/superposition.py"   # the default --config

if __name__ == "__main__":
  cli.launch_experiment("superposition", CONFIG)
