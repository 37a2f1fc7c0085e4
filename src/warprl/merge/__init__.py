"""Weight-space merging for WARP (Ramé et al., 2024): EMA, SLERP of task vectors, LITI, interpolation.

Everything here works on state dicts (``dict[str, torch.Tensor]``) or, for the streaming variants, on
safetensors files, so that merging M policies never needs M models in memory at once.
The kernels and their state-dict API are in :mod:`warprl.merge.kernels` (pure), the streamed versions in
:mod:`warprl.merge.files`; this module re-exports the public functions of both.

Conventions shared by every function:

* Math is done in at least fp32 (fp64 tensors stay fp64), whatever the storage dtype; each result is cast
  back to the dtype of the reference tensor (the EMA / init / first operand).
* Non-float tensors (integer or bool buffers) are copied unchanged from the reference dict.
* Keys and shapes must match across all inputs, otherwise ``ValueError`` is raised.
* Inputs are never modified in place, except by :func:`ema_`, which is in place by design.
"""

from warprl.merge.files import (
    load_streaming,
    merge_files,
    merge_liti_files,
    open_streaming,
    task_vector_angle_files,
    task_vector_gram_files,
)
from warprl.merge.kernels import (
    StateDict,
    angle_degrees,
    ema,
    ema_,
    interpolate,
    lerp,
    liti,
    slerp,
    task_vector_angle,
)

__all__ = [
    "StateDict",
    "angle_degrees",
    "ema",
    "ema_",
    "interpolate",
    "lerp",
    "liti",
    "load_streaming",
    "merge_files",
    "merge_liti_files",
    "open_streaming",
    "slerp",
    "task_vector_angle",
    "task_vector_angle_files",
    "task_vector_gram_files",
]
