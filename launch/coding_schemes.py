"""Coding schemes of wide Bayesian networks (Langevin posterior sampling).

python -m launch.coding_schemes --config=configs/coding_schemes.py:toy --workdir=DIR
"""

from jaxcode import cli

CONFIG = "configs/coding_schemes.py"   # the default --config

if __name__ == "__main__":
  cli.launch_experiment("coding_schemes", CONFIG)
