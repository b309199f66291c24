"""Feature dashboards of a dictionary: DIR/index.html and a page for every latent.

python -m launch.dashboards --config=configs/dashboards.py --workdir=DIR --config.sae=PATH
"""

from jaxcode import cli

CONFIG = "configs/dashboards.py"   # the default --config

if __name__ == "__main__":
  cli.launch_experiment("dashboards", CONFIG)
