"""The grouped-query attention fold the GPU path uses equals the reference's repeated-K/V path.

On CUDA the LeRobot networks fold the G query heads that share a K/V head into G x Tq rows (K/V read
once instead of repeated G times); on the CPU they run the reference's exact op order. Both are the
same dot products and row softmaxes: checked here on the CPU by forcing each path.
"""
import pytest
import torch

from flashrt_ros.models.lerobot.common import MASK_VALUE, additive_mask, attention, block_mask, fold_mask


@pytest.mark.parametrize("heads, kv_heads", [(8, 1), (15, 5), (4, 4)])
def test_folded_attention_equals_repeated_kv(heads, kv_heads):
    g = torch.Generator().manual_seed(heads)
    B, Tq, Tk, d = 2, 7, 19, 16
    q = torch.randn(B, heads, Tq, d, generator=g)
    k, v = (torch.randn(B, kv_heads, Tk, d, generator=g) for _ in range(2))
    pad = torch.rand(B, Tk, generator=g) > 0.2
    allowed = pad[:, None, :].expand(B, Tq, Tk).clone()
    allowed[:, :, 0] = True                       # every row sees at least one key
    mask = additive_mask(allowed, torch.float32)
    plain = attention(q, k, v, mask, d ** -0.5, fold=False)
    folded = attention(q, k, v, mask, d ** -0.5, fold=True)
    prefolded = attention(q, k, v, fold_mask(mask, heads // kv_heads), d ** -0.5, fold=True)
    assert plain.shape == (B, Tq, heads * d)
    torch.testing.assert_close(folded, plain, rtol=0, atol=1e-6)
    torch.testing.assert_close(prefolded, plain, rtol=0, atol=1e-6)
    # the masked keys really are ignored: changing them changes nothing
    v2 = v.clone()
    v2[~pad[:, None, :].expand_as(v2[..., 0])] += 100.0
    v2[:, :, 0] = v[:, :, 0]
    torch.testing.assert_close(attention(q, k, v2, mask, d ** -0.5, fold=True), folded, rtol=0, atol=1e-5)


def test_masks_are_finite_and_follow_the_prefix_lm_rule():
    pad = torch.tensor([[True, True, True, False]])
    ar = torch.tensor([[0, 0, 1, 0]])
    allowed = block_mask(pad, ar)
    assert allowed[0, 0].tolist() == [True, True, False, False]   # prefix does not see the later block
    assert allowed[0, 2].tolist() == [True, True, True, False]    # the later block sees the prefix
    assert not allowed[0, 3].any()                                # padding sees nothing
    mask = additive_mask(allowed, torch.bfloat16)
    assert mask.dtype == torch.bfloat16 and torch.isfinite(mask).all()
    assert float(mask.min()) <= MASK_VALUE * 0.99
