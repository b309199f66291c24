"""The feature atlas of a language model (defaults: embedded MiniLM, every block).

python -m launch.atlas --config=configs/atlas.py --workdir=DIR
"""

from jaxcode import cli

CONFIG = "configs/atlas.py"   # the default --config

if __name__ == "__main__":
  cli.launch_experiment("atlas", CONFIG)
