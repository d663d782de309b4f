"""Settings that depend on the machine: DataLoader workers and memory, mixed precision,
torch.compile and the attention kernel. Each is chosen from what the hardware offers unless the
config sets it, and a switch the hardware cannot honour is turned off with a warning, not an error:
one config runs on a laptop CPU and on a GPU node.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from typing import Any, Dict, List, Optional, Tuple

import torch

logger = logging.getLogger("facemask")

DATALOADER_KEYS = ("dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
                   "dataloader_prefetch_factor")


def local_processes() -> int:
    """Processes sharing this machine's cores (set by torchrun / accelerate launch)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def uses_gpu(training: Dict[str, Any]) -> bool:
    return torch.cuda.is_available() and not training.get("use_cpu", False)


def dataloader_settings(training: Dict[str, Any], preprocess: str, cores: Optional[int] = None,
                        gpu: Optional[bool] = None, processes: Optional[int] = None) -> Dict[str, Any]:
    """DataLoader fields for those of DATALOADER_KEYS the config leaves unset.

    Training on CPU, the model's own threads already use every core and a loader worker only takes
    cores from them (measured on 2 cores: slower), so batches are read in the main process. On a
    GPU, workers keep the next batches ready while it computes; from the cache a batch is a memory
    copy, so two suffice, while decoding every image each epoch wants all the cores there are.
    """
    cores = cores if cores is not None else (os.cpu_count() or 1)
    gpu = uses_gpu(training) if gpu is None else gpu
    per_process = max(1, cores // (processes or local_processes()))
    if not gpu:
        workers = 0 if preprocess == "cache" else max(0, per_process // 4)
    else:
        workers = min(2 if preprocess == "cache" else 8, per_process - 1)
    workers = training.get("dataloader_num_workers", workers)
    chosen = {"dataloader_num_workers": workers, "dataloader_pin_memory": gpu,
              "dataloader_persistent_workers": workers > 0, "dataloader_prefetch_factor": 4 if workers > 0 else None}
    return {key: value for key, value in chosen.items() if key not in training}


def _cpu_has_bf16() -> bool:
    cpu = torch.cpu
    return any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def _gpu_has_native_bf16() -> bool:
    """bfloat16 in hardware: Ampere (compute capability 8.0) and later. torch.cuda.is_bf16_supported()
    also says yes where it is only emulated (V100, T4), which runs slower than float32."""
    return torch.cuda.get_device_capability() >= (8, 0)


def switches_record(asked: Dict[str, Any], args: Any, model: Any) -> Dict[str, Dict[str, Any]]:
    """What the config asked for and what ran, for run_info.json and the card."""
    config = getattr(model, "config", None)
    used_attention = getattr(config, "_attn_implementation", None)
    tf32 = bool(torch.cuda.is_available() and torch.backends.cuda.matmul.allow_tf32)
    return {
        "asked": {"bf16": bool(asked.get("bf16", False)), "fp16": bool(asked.get("fp16", False)),
                  "torch_compile": bool(asked.get("torch_compile", False)),
                  "attn_implementation": asked.get("attn_implementation"), "tf32": asked.get("tf32")},
        "used": {"bf16": bool(args.bf16), "fp16": bool(args.fp16), "torch_compile": bool(args.torch_compile),
                 "attn_implementation": used_attention, "tf32": tf32},
    }


def _can_compile(gpu: bool) -> Tuple[bool, str]:
    if not torch._dynamo.is_dynamo_supported():
        return False, "torch.compile is not supported with this Python/PyTorch"
    if gpu:
        if importlib.util.find_spec("triton") is None:
            return False, "torch.compile on GPU needs triton, which is not installed"
        return True, ""
    compilers = [os.environ.get("CXX"), "g++", "c++", "clang++"]
    if not any(c and shutil.which(c) for c in compilers):
        return False, "torch.compile on CPU needs a C++ compiler (g++ or clang++), none found"
    return True, ""


def hardware_switches(training: Dict[str, Any], gpu: Optional[bool] = None,
                      bf16_supported: Optional[bool] = None,
                      compile_check: Optional[Tuple[bool, str]] = None) -> Tuple[Dict[str, Any], List[str]]:
    """`training` with fp16/bf16/torch_compile turned off where this machine cannot honour them,
    and a note for each one turned off."""
    gpu = uses_gpu(training) if gpu is None else gpu
    out, notes = dict(training), []
    if out.get("fp16") and not gpu:
        out["fp16"] = False
        notes.append("training.fp16 needs a CUDA GPU: off on this machine (training runs in float32)")
    if out.get("bf16"):
        if bf16_supported is None:
            bf16_supported = _gpu_has_native_bf16() if gpu else _cpu_has_bf16()
        if not bf16_supported:
            where = "this GPU" if gpu else "this CPU (no AVX512-BF16 or AMX)"
            out["bf16"] = False
            notes.append(f"training.bf16: {where} has no native bfloat16: off (training runs in float32)")
    if out.get("torch_compile"):
        ok, why = compile_check if compile_check is not None else _can_compile(gpu)
        if not ok:
            out["torch_compile"] = False
            notes.append(f"training.torch_compile: {why}: off")
    return out, notes


def attention_implementation(requested: Optional[str], gpu: bool) -> Tuple[Optional[str], List[str]]:
    """The attention kernel to ask transformers for: flash-attention only where it can run."""
    if requested and requested.startswith("flash_attention"):
        if not gpu:
            return "sdpa", [f"model.attn_implementation={requested} needs a CUDA GPU: using sdpa"]
        package = "flash_attn_interface" if requested == "flash_attention_3" else "flash_attn"
        if importlib.util.find_spec(package) is None:
            return "sdpa", [f"model.attn_implementation={requested} needs the {package} package: using sdpa"]
    return requested, []
