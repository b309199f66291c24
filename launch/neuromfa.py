"""NeuroMFA spectra, nulls and emergence of given checkpoints.

python -m launch.neuromfa --config=configs/neuromfa.py --workdir=DIR
"""

from jaxcode import cli

CONFIG = "configs/neuromfa.py"   # the default --config

if __name__ == "__main__":
  cli.launch_experiment("neuromfa", CONFIG)
