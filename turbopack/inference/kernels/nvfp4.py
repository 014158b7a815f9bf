"""The NVFP4 tile decoder of the weight-only Triton kernels (weight_only.py, ``Kind.NVFP4``),
reading ``nvfp4_t16x64`` (docs/layouts.md): one 64-wide tile row is eight int32 words of codes in
natural nibble order and one int32 word of four e4m3 block scales.

No lookup table and no int -> float conversion: a code's sign and magnitude bits go straight into
an fp16's fields, ``((c & 8) << 12) | ((c & 7) << 9)``, which reads as e2m1(c) * 2^-14 exactly
(codes 0 and 1 are fp16 subnormals; the fp16 -> fp32 conversion keeps them), and the 2^14 rides
on the block scale, so each weight is e2m1(c) * s exactly (at most 6 significant bits: exact in
bf16 and fp16 too). The e4m3 scale is decoded the same way (docs/layouts.md, fp8 upcast), so the
decoder uses no fp8 type and runs wherever Triton runs (sm80 has no e4m3 conversion instruction).
The global scale is not applied here: the kernels' epilogue multiplies the fp32 sum by 1/gs once.
"""

from __future__ import annotations

from turbopack.inference.kernels.epilogue import tl, triton

if triton is not None:

    @triton.jit
    def _e2m1(w, P: tl.constexpr, s14):
        """The nibble at bit P of w times its block scale: fp16 bits ((c & 8) << 12) | ((c & 7) << 9)
        are e2m1(c) * 2^-14 (exact; codes 0/1 are fp16 subnormals, kept by the conversion), and
        s14 = s * 2^14, so the product is e2m1(c) * s exactly (<= 6 significant bits)."""
        c = w >> P
        h = ((c & 8) << 12) | ((c & 7) << 9)
        return h.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32) * s14

    @triton.jit
    def nv4_planes(QW, SB, row_w, row_s, rok, t, TN: tl.constexpr):
        """64-wide tile t of BN NVFP4 rows -> eight exact fp32 [BN, 8] planes, plane e = elements
        k = 8*word + e (natural nibble order); SB holds one int32 word of four e4m3 scales per row
        and tile, the scale of word j being byte j // 2 (16 codes per scale)."""
        j = tl.arange(0, 8)
        w = tl.load(QW + row_w[:, None] + t * (TN * 8) + j[None, :], mask=rok[:, None], other=0)
        sw = tl.load(SB + row_s + t * TN, mask=rok, other=0)
        b = sw[:, None] >> ((j // 2) * 8)[None, :]
        # e4m3 byte -> fp16 bits ((b & 0x80) << 8) | ((b & 0x7F) << 7) = its value * 2^-8, exact for
        # every finite e4m3 (subnormals too): integer ops only, no fp8 type (sm80 has no fp8 cvt);
        # times 2^22 = 2^8 (this) * 2^14 (the e2m1 decode's)
        h = ((b & 0x80) << 8) | ((b & 0x7F) << 7)
        s14 = h.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32) * 4194304.0
        return (_e2m1(w, 0, s14), _e2m1(w, 4, s14), _e2m1(w, 8, s14), _e2m1(w, 12, s14),
                _e2m1(w, 16, s14), _e2m1(w, 20, s14), _e2m1(w, 24, s14), _e2m1(w, 28, s14))
