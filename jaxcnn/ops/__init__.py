"""The numerical kernels behind the layers: convolution, pooling, batch normalisation.

Each op has a plain definition in XLA's terms (``*_xla``: ``lax.conv_general_dilated``,
``lax.reduce_window``, ``jnp.sum``) next to the formulations that XLA's CPU backend runs
faster (``*_cpu``); the dispatching op (:func:`conv2d`, :func:`max_pool2d`,
:func:`batch_norm_train`) picks one at trace time through the one switch in
:mod:`jaxcnn.ops.select`: :func:`set_kernels` / :func:`use_kernels` / ``$JAXCNN_KERNELS``
(``"auto"``: fast on CPU, plain elsewhere; ``"xla"``: plain everywhere).
"""

from .barrier import materialize
from .conv import conv2d, conv2d_cpu, conv2d_xla
from .norm import batch_norm_train
from .pool import avg_pool2d, max_pool2d, max_pool2d_cpu, max_pool2d_xla
from .select import ENV_VAR, MODES, fast_cpu_kernels, kernels, set_kernels, use_kernels

__all__ = [
    "ENV_VAR",
    "MODES",
    "avg_pool2d",
    "batch_norm_train",
    "conv2d",
    "conv2d_cpu",
    "conv2d_xla",
    "fast_cpu_kernels",
    "kernels",
    "materialize",
    "max_pool2d",
    "max_pool2d_cpu",
    "max_pool2d_xla",
    "set_kernels",
    "use_kernels",
]
