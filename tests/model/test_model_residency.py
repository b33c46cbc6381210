"""Issue 3: weights stay as mapped from the checkpoint (FP8 + ue8m0 scales, BF16, packed FP4) and
are dequantised per use, so the model holds ≈ the checkpoint's file size — with logits identical
to dequantising once at load."""

import pytest
import torch

from model.bench_model import model_bytes
from model.generate import load_model
from model.layers.linear import FP8, Linear
from model.layers.moe import MoE
from model.toy import checkpoint_bytes

IDS = [0, 9, 1234, 77, 128000, 5, 42, 42, 3000, 17, 900, 2, 64, 65, 66, 100000, 8, 31, 7, 500]


def _ratio(held: dict[str, int], file_bytes: int) -> float:
    return (held["owned_bytes"] + held["mapped_bytes"]) / file_bytes


def test_fp8_resident_holds_about_the_file_size(tiny_ckpt):
    file_bytes = checkpoint_bytes(tiny_ckpt)
    resident = load_model(tiny_ckpt, progress=False)  # fp8_resident is the default
    held = model_bytes(resident.model, tiny_ckpt)
    once = load_model(tiny_ckpt, progress=False, fp8_resident=False)
    held_once = model_bytes(once.model, tiny_ckpt)
    ratio, ratio_once = _ratio(held, file_bytes), _ratio(held_once, file_bytes)
    print(f"tiny fp32: held / file = {ratio:.3f} resident, {ratio_once:.3f} dequantised once "
          f"(owned {held['owned_bytes']} vs {held_once['owned_bytes']} of {file_bytes} bytes)")
    # measured (fp32 compute): 0.995 resident vs 2.35 dequantised once on tiny (2.33 on small)
    assert ratio <= 1.3
    assert held["owned_bytes"] <= 0.02 * file_bytes  # only small fp32 copies (norms, rope)
    assert ratio_once > 1.3
    for module in resident.model.modules():
        if isinstance(module, MoE):  # the fused-MoE bank addresses the mapped experts in place
            assert module.bank is not None and module.bank.zero_copy
            assert module.bank.experts == tuple(range(module.n_experts))
        if isinstance(module, Linear) and module.fmt == "fp8":
            assert module.dense is None and module.weight.dtype == FP8
            assert module.scale.dtype == torch.float8_e8m0fnu and module.scale.numel() > 0


@pytest.mark.parametrize(("numerics", "dtype"), [("dequant", "float32"), ("native", "float32"),
                                                 ("dequant", "bfloat16")])
def test_fp8_resident_logits_identical(tiny_ckpt, numerics, dtype):
    outs = []
    for resident in (True, False):
        lm = load_model(tiny_ckpt, dtype=dtype, numerics=numerics, progress=False,
                        fp8_resident=resident)
        cache = lm.new_cache()
        prefill = lm.logits(IDS[:-2], cache)
        step = torch.stack([lm.logits([t], cache, last_only=True) for t in IDS[-2:]])
        outs.append((prefill, step))
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("rows", [1, 5])
def test_dequant_linear_in_slices_equals_dequantising_once(rows):
    from model.kernels import ops, quant
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8192 + 200, 192, generator=gen)  # two slices, partial 128-blocks both ways
    q, s = quant.quant_fp8_block(w)
    x = torch.randn(rows, 192, generator=gen)
    for native in (False, True):
        want = ops.linear(x, quant.dequant_fp8_block(q, s), quantize_input=native)
        assert torch.equal(ops.dequant_linear(x, q, s, torch.float32, native), want)
    bf = w.to(torch.bfloat16)
    assert torch.equal(ops.dequant_linear(x, bf, None, torch.float32), ops.linear(x, bf.float()))
