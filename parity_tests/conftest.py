"""Shared set-up of the parity suite: CPU, float32, JAX matmul precision 'highest', TF32 off.

torch and torchvision are imported unconditionally: without them the suite fails at
collection rather than skipping.
"""

from __future__ import annotations

import jax
import torch
import torchvision  # noqa: F401  (the suite must fail, not skip, without it)

jax.config.update("jax_default_matmul_precision", "highest")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_default_dtype(torch.float32)
