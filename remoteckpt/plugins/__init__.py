"""Framework backends behind the public shims (`remoteckpt.tensorflow`, `remoteckpt.jax`, ...).

Each plugin module imports its framework when it is imported; the shims import their plugin
only when one of their functions is called, so ``import remoteckpt`` (or a shim) never pulls
in a framework.
"""
