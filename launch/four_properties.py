"""Feature-atlas table at every residual-stream layer of a language model.

python -m launch.four_properties --config=configs/four_properties.py --workdir=DIR
"""

from jaxcode import cli

CONFIG = "configs/four_properties.py"   # the default --config

if __name__ == "__main__":
  cli.launch_experiment("four_properties", CONFIG)
