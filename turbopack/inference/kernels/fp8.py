"""FP8 (e4m3) linears.

``fp8_rowmajor`` (sm89/sm90, native FP8 MMA): the per-token e4m3 quantizer (w8a8.quant_rows_kernel,
one launch) then torch._scaled_mm (cuBLASLt) with rowwise scales (scale_a [M, 1], scale_b [1, N]
float32), bias and the bf16 output in the same call; or, on sm90 where the tuned table names
``cuda_ws``, the warp-specialized e4m3 wgmma GEMM (cuda_i8ws, W8A8's kernel on float8 codes).
cuBLASLt's rowwise FP8 writes bf16 only, so fp16 activations get one extra cast there.
``fp8_t16x64_upcast`` (sm80/86, no FP8 MMA): weight_only's kernels decode e4m3 to 16 bits in
registers (exact), 16-bit activations; y = fp32(sum x16 * q) * s.
"""

from __future__ import annotations

import torch

from turbopack.inference.kernels import cuda_i8ws, w8a8, weight_only
from turbopack.inference.kernels.config import KernelConfig, KernelName


def rowmajor_linear(x2: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int],
                    bias: torch.Tensor | None, cfg: KernelConfig, out: torch.Tensor | None = None) -> torch.Tensor:
    w = packed["qweight"]
    np_, kp = w.shape[0] * w.shape[1], w.shape[2]
    n = shape[0]
    q, sa = w8a8.quantize_rows(x2, kp, fp8=True)
    if cfg.kernel is KernelName.CUDA_WS:  # dispatch checked cuda_i8ws.supports: the e4m3 wgmma GEMM
        y = out if out is not None else torch.empty(x2.shape[0], n, dtype=x2.dtype, device=x2.device)
        return cuda_i8ws.i8_wgws(q, sa, packed, shape, bias, y, **w8a8.ws_knobs(cfg))
    sw = packed["scales"]
    sb = sw.view(1, np_) if sw.numel() == np_ else sw.expand(np_).contiguous().view(1, np_)
    b = None
    if bias is not None:
        b = bias.to(torch.bfloat16)
        if np_ != n:
            b = torch.nn.functional.pad(b, (0, np_ - n))
    if x2.device.type == "cuda":
        y = torch._scaled_mm(q, w.view(np_, kp).t(), scale_a=sa, scale_b=sb, bias=b, out_dtype=torch.bfloat16)
    else:  # the CPU interpreter's stand-in for cuBLASLt (tests): same math in fp32
        y = (q.float() @ w.view(np_, kp).float().t()) * sa * sb + (b.float() if b is not None else 0.0)
        y = y.to(torch.bfloat16)
    if np_ != n:
        y = y[:, :n]
    if out is not None:
        out.copy_(y)
        return out
    return y if y.dtype == x2.dtype and y.is_contiguous() else y.to(x2.dtype).contiguous()


def upcast_linear(x2: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int],
                  bias: torch.Tensor | None, cfg: KernelConfig, out: torch.Tensor | None = None) -> torch.Tensor:
    return weight_only.launch(x2, weight_only.FP8, packed, shape, bias, cfg, out=out)


def scaled_mm_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
