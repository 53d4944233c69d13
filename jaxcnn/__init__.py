"""jaxcnn: the CNNs of Dive into Deep Learning ch. 5 in JAX/Flax with PyTorch semantics.

Models take NHWC input (use :func:`nchw_to_nhwc` for torch-layout arrays) and mirror the
PyTorch models' structure, so their variables convert to and from torch state dicts
(:mod:`jaxcnn.convert`). This package never imports torch.
"""

from . import (
    _startup,  # noqa: F401  (first: Ctrl-C while the CLI starts)
    convert,
    inspect,
    layers,
    registry,
    testing,
    traversal,
)
from ._layout import nchw_to_nhwc, nhwc_to_nchw
from .convert import (
    StateDictError,
    WeightsFileError,
    from_torch_state_dict,
    load_safetensors,
    save_safetensors,
    to_torch_state_dict,
)
from .inspect import Summary, summary, torch_style_repr
from .models import build_model, create_model, input_shape
from .registry import list_models, make_config
from .traversal import (
    buffers,
    children,
    modules,
    named_buffers,
    named_children,
    named_modules,
    named_parameters,
    parameters,
)

__version__ = "0.1.0"

__all__ = [
    "StateDictError",
    "Summary",
    "WeightsFileError",
    "__version__",
    "buffers",
    "build_model",
    "children",
    "convert",
    "create_model",
    "from_torch_state_dict",
    "input_shape",
    "inspect",
    "layers",
    "list_models",
    "load_safetensors",
    "make_config",
    "modules",
    "named_buffers",
    "named_children",
    "named_modules",
    "named_parameters",
    "nchw_to_nhwc",
    "nhwc_to_nchw",
    "parameters",
    "registry",
    "save_safetensors",
    "summary",
    "testing",
    "to_torch_state_dict",
    "torch_style_repr",
    "traversal",
]
