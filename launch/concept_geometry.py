"""The geometry of SAE concepts: crystals, lobes and galaxy.

python -m launch.concept_geometry --config=configs/concept_geometry.py --workdir=DIR
"""

from jaxcode import cli

CONFIG = "configs/concept_geometry.py"   # the default --config

if __name__ == "__main__":
  cli.launch_experiment("concept_geometry", CONFIG)
