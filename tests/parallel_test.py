"""Mesh and sharding helpers, on the 8 fake CPU devices of conftest."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxcode import parallel
from jaxcode.errors import ConfigError


def test_eight_fake_devices():
  assert jax.device_count() == 8


@pytest.mark.parametrize("data,model,expect", [(-1, 1, (8, 1)), (2, -1, (2, 4)), (-1, 4, (2, 4)),
                                               (8, 1, (8, 1))])
def test_mesh_sizes(data, model, expect):
  mesh = parallel.make_mesh(data, model)
  assert (mesh.shape["data"], mesh.shape["model"]) == expect


@pytest.mark.parametrize("data,model,msg", [(3, -1, "does not divide"), (-1, -1, "at most one"),
                                            (4, 4, "needs 16 devices"), (0, 1, "mesh.data=0")])
def test_mesh_errors(data, model, msg):
  with pytest.raises(ConfigError, match=msg):
    parallel.make_mesh(data, model)


def test_tree_shardings_rules_and_fallback():
  mesh = parallel.make_mesh(2, 4)
  tree = {"enc": {"kernel": jnp.zeros((6, 8))}, "dec": {"kernel": jnp.zeros((8, 6))},
          "odd": {"kernel": jnp.zeros((6, 5))}}
  sh = parallel.tree_shardings(tree, mesh, [("enc/kernel", P(None, "model")),
                                            ("dec/kernel", P("model", None)),
                                            ("odd/kernel", P(None, "model"))])
  assert sh["enc"]["kernel"].spec == P(None, "model")
  assert sh["dec"]["kernel"].spec == P("model", None)
  assert sh["odd"]["kernel"].spec == P()  # 5 is not divisible by 4: replicated
  with pytest.raises(ConfigError, match="odd/kernel"):
    parallel.tree_shardings(tree, mesh, [("odd/kernel", P(None, "model"))], strict=True)


def test_global_batch_and_process_rows():
  mesh = parallel.make_mesh(-1, 1)
  sh = parallel.batch_sharding(mesh, 2)
  x = np.arange(32, dtype=np.float32).reshape(16, 2)
  assert parallel.process_rows(16, sh) == slice(0, 16)
  g = parallel.global_batch(x, sh, 16)
  assert g.sharding.spec == P("data", None)
  np.testing.assert_array_equal(np.asarray(g), x)
