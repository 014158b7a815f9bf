"""How transformers loads a compressed-tensors folder we exported: the one line to use, and why a
plain ``from_pretrained`` fails when it does. docs/interop.md shows exactly these lines and
tests/packer/interop/test_hf_load.py runs them from the doc.

Measured with transformers 5.25 + compressed-tensors 0.20.1 on the CPU: every export loads with a
plain ``from_pretrained`` except asymmetric pack-quantized int4, where transformers' model init
builds ``weight_zero_point`` unpacked ([N, K/G]) while the on-disk format (and compressed-tensors'
own ModelCompressor) packs it along N ([N/8, K/G]); ``CompressedTensorsConfig(dequantize=True)``
decompresses at load instead and reads it. vLLM reads the file as is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class HFLoad(str, Enum):
    PLAIN = "plain"
    DEQUANTIZE = "dequantize"


@dataclass(frozen=True)
class LoadRecipe:
    template: str  # {path} is the export folder
    plain_fails: str | None  # why a plain from_pretrained does not read it, when it does not

    def line(self, path: str | Path) -> str:
        return self.template.format(path=str(path))


RECIPES = {
    HFLoad.PLAIN: LoadRecipe('model = AutoModelForCausalLM.from_pretrained("{path}")', None),
    HFLoad.DEQUANTIZE: LoadRecipe(
        'model = AutoModelForCausalLM.from_pretrained("{path}", '
        'quantization_config=CompressedTensorsConfig(dequantize=True))',
        "asymmetric int4: transformers' model init expects weight_zero_point unpacked [N, K/G], the file "
        "packs it along N [N/8, K/G] as compressed-tensors specifies (vLLM reads it as is)"),
}


def _needs_dequantize(group: dict) -> bool:
    w = group.get("weights") or {}
    return group.get("format") == "pack-quantized" and w.get("num_bits") == 4 and w.get("symmetric") is False


def recipe_for(folder: str | Path) -> LoadRecipe:
    """The transformers load recipe of the exported folder, from its config.json."""
    qc = json.loads((Path(folder) / "config.json").read_text()).get("quantization_config") or {}
    groups = (qc.get("config_groups") or {}).values()
    return RECIPES[HFLoad.DEQUANTIZE if any(_needs_dequantize(g) for g in groups) else HFLoad.PLAIN]
