"""Sparse autoencoders.

python -m launch.train_sae --config=configs/sae.py:topk --workdir=DIR
"""

from jaxcode import cli

CONFIG = "configs/sae.py"   # the default --config

if __name__ == "__main__":
  cli.launch_experiment("train_sae", CONFIG)
