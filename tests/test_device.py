"""turbopack.device: PeakMemory on the CPU (the CUDA side reads the allocator's own counters)."""

from __future__ import annotations

import torch

from turbopack.device import PeakMemory


def test_cpu_peak_counts_each_storage_once_until_it_is_freed():
    mb = 1 << 20
    with PeakMemory(torch.device("cpu")) as mem:
        a = torch.empty(mb, dtype=torch.uint8)
        b = a + 1
        views = (b[10:20], b.view(torch.int8), torch.nn.Parameter(b.float()).data[:5])  # the float copy: 4 MB
        assert mem.now == 6 * mb  # a, b, and the float32 copy that the .data view keeps alive
        del a, views
        assert mem.now == mb
        c = torch.zeros(3 * mb, dtype=torch.uint8)
        b.add_(1)  # in place: nothing new
        assert mem.now == 4 * mb
        del b, c
    assert mem.peak == 6 * mb and mem.now == 0
