"""Device probe (issue 11): do bf16/fp16 tensor-core MMAs keep subnormal inputs? (cuBLAS HMMA)"""
import torch

for dt, tiny in ((torch.bfloat16, 2.0 ** -130), (torch.float16, 2.0 ** -20)):
    a = torch.zeros(64, 64, device="cuda", dtype=dt)
    a[:, 0] = tiny
    b = torch.zeros(64, 64, device="cuda", dtype=dt)
    b[0, :] = 2.0 ** 64 if dt == torch.bfloat16 else 2.0 ** 10
    y = (a @ b).float()
    print(dt, "subnormal input", tiny, "->", y[0, 0].item(), "(kept)" if y[0, 0].item() != 0 else "(flushed)")
