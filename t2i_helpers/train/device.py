"""Where and in what precision a run computes: device, autocast, and torchrun's ranks.

CUDA, then Apple's MPS, then the CPU; bf16 autocast where the GPU has bf16 hardware, fp16 with a
gradient scaler on older GPUs (Colab's T4), fp32 on the CPU, where results must not depend on the
machine's floating-point kernels more than they must.
"""
from __future__ import annotations

import os
from contextlib import nullcontext

import torch

from t2i_helpers.errors import TrainingError


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA, then Apple's MPS, then the CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def native_bf16(device: torch.device) -> bool:
    """True on GPUs with bfloat16 hardware: NVIDIA compute capability 8.0 (Ampere) and later, or ROCm.

    Not ``torch.cuda.is_bf16_supported()``: by default it also says True where bf16 is only *emulated*
    (it checks that a bf16 tensor can be created), e.g. on Colab's free T4 (capability 7.5), where
    bf16 matrix products are slow and cuDNN has no bf16 convolutions; fp16 is the T4's fast type.
    """
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def pick_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on GPUs with bf16 hardware, fp16 (with a grad scaler) on older GPUs such as the
    T4, fp32 on the CPU and MPS."""
    if precision not in {"auto", "fp32", "bf16", "fp16"}:
        raise TrainingError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if native_bf16(device) else "fp16"
    return "fp32"


def use_fast_gpu_kernels(device: torch.device) -> None:
    """On CUDA: let cuDNN time its convolution algorithms for each new shape and keep the fastest (a
    training run repeats the same shapes every step), and let float32 matrix products use TF32 tensor
    cores (cuDNN convolutions already do by default), as nanoGPT does. Process-wide switches; nothing
    changes on the CPU or MPS."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world size) from torchrun's environment; (0, 0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def start_distributed(device_name: str, local_rank: int, world: int) -> torch.device:
    """Join torchrun's process group (when there is more than one process) and pick this rank's device."""
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and device_name != "cpu" else "gloo"
        torch.distributed.init_process_group(backend)
    device = pick_device(device_name)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device
