"""Activation extraction into the resumable cache (rerun the same command to finish it).

python -m launch.extract --config=configs/extract.py --workdir=DIR
"""

from jaxcode import cli

CONFIG = "configs/extract.py"   # the default --config

if __name__ == "__main__":
  cli.launch_experiment("extract", CONFIG)
