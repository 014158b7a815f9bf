"""turbopack.device: PeakMemory on the CPU (the CUDA side reads the allocator's own counters)."""

from __future__ import annotations

import torch

from turbopack.device import LiveBlock, PeakMemory, peak_live_blocks


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


def _frames(line: int) -> list[dict]:
    return [{"filename": "/x/torch/nn/functional.py", "line": 1, "name": "linear"},
            {"filename": "/repo/turbopack/packer/calibration/gptq.py", "line": line, "name": "f"},
            {"filename": "/repo/turbopack/packer/calibration/pipeline.py", "line": 9, "name": "g"}]


def test_peak_breakdown_replays_the_history_back_to_the_peak():
    """Events: A (made before the recorded window) freed late; B, C allocated; C freed; D allocated.
    Peak: A + B + C = 700 after C's allocation; alive then A ("?": no record of where), B, C, each
    named by its innermost turbopack frame; at the end B and D are alive (the segments' blocks)."""
    ev = [{"action": "alloc", "addr": 2, "size": 200, "frames": _frames(20)},
          {"action": "alloc", "addr": 3, "size": 400, "frames": _frames(30)},
          {"action": "free_requested", "addr": 3, "size": 400},
          {"action": "free_completed", "addr": 3, "size": 400},
          {"action": "free_requested", "addr": 1, "size": 100},
          {"action": "alloc", "addr": 3, "size": 50, "frames": _frames(40)}]
    blocks = [{"address": 2, "size": 512, "requested_size": 200, "state": "active_allocated", "frames": _frames(20)},
              {"address": 3, "size": 512, "requested_size": 50, "state": "active_allocated", "frames": _frames(40)},
              {"address": 9, "size": 512, "requested_size": 512, "state": "inactive", "frames": []}]
    snap = {"segments": [{"device": 0, "blocks": blocks}, {"device": 1, "blocks": [dict(blocks[0], address=7)]}],
            "device_traces": [ev, []]}
    peak, alive = peak_live_blocks(snap, 0)
    assert peak == 700
    gptq = "packer/calibration/gptq.py"
    assert alive == [LiveBlock(400, f"{gptq}:30 f"), LiveBlock(200, f"{gptq}:20 f"), LiveBlock(100, "?")]
    assert peak_live_blocks(snap, 1) == (200, [LiveBlock(200, "packer/calibration/gptq.py:20 f")])
