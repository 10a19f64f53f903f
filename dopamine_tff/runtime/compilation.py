"""Compiling TFF computations for the C++ worker: secure intrinsics to their bodies."""

from __future__ import annotations

import tensorflow_federated as tff


def compile_for_simulation(comp):
  """Replaces secure intrinsics by their plain bodies, then compiles to native form.

  The C++ worker cannot run ``federated_secure_sum_bitwidth``; TFF's test
  compiler rewrites it into a plain integer sum, which is what we simulate.

  Unlike ``tff.backends.native.desugar_and_transform_to_native`` we do not run
  Grappler's AGGRESSIVE rewrites at compile time: they reorder float
  arithmetic, and then the TFF runtime and the in-process runtime (same TF
  functions, default optimisations) would no longer give bit-identical weights.
  The worker still applies TensorFlow's default graph optimisations.
  """
  # Internal modules of the pinned TFF 0.87 (the steps of
  # desugar_and_transform_to_native, minus its Grappler configuration).
  from tensorflow_federated.python.core.environments.tensorflow_backend import (
    tensorflow_tree_transformations,
  )
  from tensorflow_federated.python.core.impl.computation import computation_impl
  from tensorflow_federated.python.core.impl.context_stack import context_stack_impl

  comp = tff.backends.test.replace_secure_intrinsics_with_bodies(comp)
  desugared, _ = tensorflow_tree_transformations.replace_intrinsics_with_bodies(
    comp.to_building_block()
  )
  return tff.backends.native.transform_to_native_form(
    computation_impl.ConcreteComputation(
      computation_proto=desugared.proto, context_stack=context_stack_impl.context_stack
    ),
    grappler_config=None,
  )


def _compile_mergeable(comp):
  """Secure intrinsics to their bodies, then TFF's mergeable computation form.

  The mergeable compiler refuses secure intrinsics; after the rewrite the
  integer code sums are plain sums, which merge exactly across workers.
  """
  from tensorflow_federated.python.core.backends.native import mergeable_comp_compiler

  comp = tff.backends.test.replace_secure_intrinsics_with_bodies(comp)
  return mergeable_comp_compiler.compile_to_mergeable_comp_form(comp)
