"""What the scripts share about where they run: the device, the precision, torchrun's processes.

A ground module: it imports no other module of the project, so that main.py, train.py, engine.py
and benchmark.py can all use it without importing one another.
"""
import os
import sys
from typing import Callable, Optional, Tuple

import torch
import torch.distributed as dist


class UserError(RuntimeError):
    """A problem the user can fix: printed as one line, exit status 1."""


def pick_device(name: str) -> torch.device:
    """``auto``, ``cuda`` or ``cpu`` as a device; ``cuda`` without a GPU is the user's error."""
    if name == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda: no CUDA device is available; use --device cpu or auto')
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    return torch.device(name)


# --- what the CPU has -------------------------------------------------------------------------------

def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively: it has AVX512_BF16 or AMX, and oneDNN may use
    it (``ONEDNN_MAX_CPU_ISA`` can cap oneDNN below). Elsewhere, AVX-512 CPUs without AVX512_BF16
    among them, oneDNN emulates bf16 convolutions, and AVX2-only CPUs run them an order of
    magnitude slower than float32."""
    try:
        has = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return bool(has and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_has_native_fp16() -> bool:
    """Likewise for float16 (AVX512_FP16 or AMX-FP16), which most CPUs lack."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False


# precision -> (dtype name, the units oneDNN looks for, the test of this module that finds them)
CPU_NATIVE = {'bf16': ('bfloat16', 'AVX512_BF16 nor AMX', 'cpu_has_native_bf16'),
              'fp16': ('float16', 'AVX512_FP16 nor AMX-FP16', 'cpu_has_native_fp16')}


def resolve_precision(device: torch.device, precision: str,
                      warn: Optional[Callable[[str], None]] = None) -> str:
    """The precision to run: ``precision``, except bf16 or fp16 on a CPU that lacks it natively,
    where oneDNN emulates it an order of magnitude slower than fp32: then one warning line (to
    ``warn``, by default stderr under the script's name), and fp32."""
    if device.type == 'cpu' and precision in CPU_NATIVE:
        dtype, units, native = CPU_NATIVE[precision]
        if not globals()[native]():
            (warn or warning)(f'--precision {precision}: this CPU has no native {dtype} (oneDNN '
                              f'finds neither {units}), where {precision} runs an order of '
                              f'magnitude slower than fp32; running fp32 instead (exact, and faster)')
            return 'fp32'
    return precision


def warning(message: str) -> None:
    """One warning line on stderr, under the name of the script that runs."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'python'
    print(f'{prog}: warning: {message}', file=sys.stderr, flush=True)


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` (fp32: autocast off)."""
    if precision == 'fp32':
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == 'bf16' else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def setup_cuda(allow_tf32: bool) -> None:
    """What fast GPU work sets: cuDNN picks the fastest kernels for the fixed batch shape;
    TF32 stays off unless asked for, since it changes fp32's logits."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32


# --- torchrun ---------------------------------------------------------------------------------------

def start_processes(name: str) -> Tuple[torch.device, int, int]:
    """(device, rank, world size) of this process: under torchrun, the process group is joined
    (NCCL on GPUs, one GPU a process by LOCAL_RANK; gloo on the CPU); alone, rank 0 of 1."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    device = pick_device(name)
    if world > 1:
        if device.type == 'cuda':
            local = int(os.environ.get('LOCAL_RANK', '0'))
            torch.cuda.set_device(local)
            device = torch.device('cuda', local)
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    return device, rank, world


def end_processes() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
