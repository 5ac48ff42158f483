"""The one place images change between uint8 pixels and the models' float range [-1, 1].

Files and caches hold uint8 ``[N, H, W, 3]`` (height, width, channel); models read float
``[N, 3, H, W]`` in [-1, 1]. Every conversion in the package goes through these three functions, so
rounding and layout are the same everywhere.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from t2i_helpers.errors import T2IError


def channels_first(x: Tensor) -> Tensor:
    """[N, H, W, 3] -> [N, 3, H, W]; images already channels-first pass unchanged."""
    if x.ndim != 4:
        raise T2IError(f"expected images [N, H, W, 3] or [N, 3, H, W], got shape {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2) if x.shape[-1] == 3 and x.shape[1] != 3 else x


def to_float(images: np.ndarray | Tensor) -> Tensor:
    """uint8 images (either layout, numpy or torch) -> float32 [N, 3, H, W] in [-1, 1]; float passes as float32."""
    x = torch.as_tensor(np.asarray(images)) if isinstance(images, np.ndarray) else images
    if x.dtype != torch.uint8:
        return x.float()
    return channels_first(x).to(torch.float32, memory_format=torch.contiguous_format).div_(127.5).sub_(1.0)


def to_uint8(images: np.ndarray | Tensor) -> Tensor:
    """Float images in [-1, 1] -> uint8 [N, 3, H, W] (what a saved PNG holds); uint8 passes, channels-first."""
    x = torch.as_tensor(np.asarray(images)) if isinstance(images, np.ndarray) else images
    if x.dtype == torch.uint8:
        return channels_first(x).contiguous()
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return channels_first(x).contiguous()


def to_pixels(images: np.ndarray | Tensor) -> np.ndarray:
    """Any image batch -> uint8 numpy [N, H, W, 3], for PIL and matplotlib."""
    return to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
