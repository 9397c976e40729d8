"""fuse_attention: q @ k^T [scale] [mask] -> softmax -> [dropout] -> @ v  ->  one SDPA.

Structure (softmax and the two matmuls gone, one scaled_dot_product_attention with the right
scale, mask and is_causal), lint, numbers against the graph before, refusals with their reason,
idempotence; on hand-written attention blocks (the zoo's BERT, nanoGPT and Llama blocks, HF's
3-d bmm form, cross attention), on ATen graphs drawn directly (every scale, mask and k^T
spelling; every refusal), and on fxc.testing's random graphs with attention planted.

The zoo: tiny gpt2 and vit compiled with verify=True match eager, with the counts of all three
transformer passes (bert and llama: test_pass_merge_parallel_linear.py); base sizes, counts
only, are marked slow.
"""
import contextlib
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fxc
from fxc.capture import capture
from fxc.models import bert, get, gpt2, llama
from fxc.passes import fuse_attention
from fxc.testing import OPS, OpRejected, OpSpec, graphs
import passkit  # noqa: E402
from passkit import AtenGraph, ctx, count, outputs, captured, many  # noqa: E402
from fxc.passes import PassContext

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default
SOFTMAX = (aten.softmax.int, aten._softmax.default)


def sdpas(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is SDPA]


def run_checked(gm, inputs):
    """Run the pass; check lint, numbers against the graph before, idempotence."""
    return passkit.run_checked(fuse_attention, gm, inputs, ctx(), passkit.close_nan)[0]


# -- hand-written attention blocks -----------------------------------------------------------

BERT = bert.BertConfig(hidden_size=16, num_attention_heads=2, intermediate_size=32, vocab_size=16)
GPT = gpt2.GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_embd=16)
LLAMA = llama.LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8)


class BertBlock(nn.Module):
    """The zoo's BertSelfAttention with HF's extended mask (finfo.min on padding)."""

    def __init__(self):
        super().__init__()
        self.attn = bert.BertSelfAttention(BERT)

    def forward(self, x, keep):
        mask = (1.0 - keep[:, None, None, :].float()) * torch.finfo(torch.float32).min
        return self.attn(x, mask)


class LlamaBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = llama.LlamaForCausalLM(LLAMA)
        self.attn = self.model.layers[0].self_attn

    def forward(self, x, keep):
        cos, sin = self.model.rotary_emb(x.shape[1], x.dtype)
        return self.attn(x, cos, sin, self.model.causal_mask(keep, x.dtype))


class Bmm3d(nn.Module):
    """HF's older eager attention on (B * heads, L, E) with bmm, scale on q, 2-d float mask."""

    def forward(self, q, k, v, mask):
        w = torch.bmm(q * 0.125, k.transpose(1, 2)) + mask
        return torch.bmm(F.softmax(w, dim=-1), v)


class Cross(nn.Module):
    """Cross attention (Lq != Lk, Ev != E), keys laid out (B, L, H, E): k^T is one permute."""

    def forward(self, q, kv, v):
        s = torch.matmul(q, kv.permute(0, 2, 3, 1)) * 0.3  # (B, H, Lq, Lk)
        return torch.matmul(F.dropout(s.softmax(-1), 0.1, training=False), v)


class SwinShifted(nn.Module):
    """torchvision's shifted_window_attention after fold_constants: S + bias (1, heads, N, N),
    viewed (B, nW, heads, N, N), + the window mask (1, nW, 1, N, N), viewed back; q scaled."""

    def __init__(self, b=2, nw=4, heads=2, n=6):
        super().__init__()
        self.shape5 = (b, nw, heads, n, n)
        self.register_buffer("bias", torch.randn(1, heads, n, n))
        m = torch.zeros(nw, n, n)
        m[1:, : n // 2, n // 2:] = -100.0  # windows 1.. mix two regions: cross terms masked
        m[1:, n // 2:, : n // 2] = -100.0
        self.register_buffer("mask", m)

    def forward(self, q, k, v):  # (B * nW, heads, N, E)
        s = (q * 0.3) @ k.transpose(-2, -1) + self.bias
        s = s.view(*self.shape5) + self.mask.unsqueeze(1).unsqueeze(0)
        return F.softmax(s.view(-1, *self.shape5[2:]), dim=-1) @ v


class EagerCausal(nn.Module):
    """HF's eager attention on a folded causal mask written with finfo.min, not -inf."""

    def __init__(self, n=5):
        super().__init__()
        keep = torch.ones(n, n, dtype=torch.bool).tril()
        self.register_buffer("mask", torch.zeros(1, 1, n, n).masked_fill(
            ~keep, torch.finfo(torch.float32).min))

    def forward(self, q, k, v):
        return F.softmax(q @ k.transpose(2, 3) * 0.25 + self.mask, dim=-1) @ v


class TwoMasks(nn.Module):
    """T5: a position bias and a padding mask, both computed at run time, no scaling."""

    def forward(self, q, k, v, bias, keep):
        s = q @ k.transpose(3, 2) + bias
        s = s.masked_fill(~keep, float("-inf"))
        return F.softmax(s, dim=-1) @ v


class ScaledQView(nn.Module):
    """Whisper/BART eager: q = (linear(x) * scaling).view(...).transpose(1, 2)."""

    def __init__(self):
        super().__init__()
        self.q, self.kv = nn.Linear(16, 16), nn.Linear(16, 32)

    def forward(self, x):  # (B, L, 16), 2 heads of 8
        b, n = x.shape[:2]
        q = (self.q(x) * 8 ** -0.5).view(b, n, 2, 8).transpose(1, 2)
        k, v = self.kv(x).view(b, n, 2, 2, 8).permute(2, 0, 3, 1, 4)
        return (q @ k.transpose(-1, -2)).softmax(-1) @ v


def keep_mask(batch, seq):
    m = torch.ones(batch, seq, dtype=torch.long)
    m[0, seq - 2:] = 0
    return m


# name: (builder, inputs, [(scale, has mask, is_causal)] per SDPA in graph order)
HAND_WRITTEN = {
    "bert": (BertBlock, lambda: (torch.randn(2, 6, 16), keep_mask(2, 6)),
             [(1 / math.sqrt(8), True, False)]),
    "nanogpt_causal": (lambda: gpt2.CausalSelfAttention(GPT), lambda: (torch.randn(2, 6, 16),),
                       [(1 / math.sqrt(8), True, False)]),
    "llama_gqa": (LlamaBlock, lambda: (torch.randn(2, 6, 16), keep_mask(2, 6)),
                  [(0.5, True, False)]),
    "bmm_3d": (Bmm3d, lambda: (torch.randn(4, 5, 8), torch.randn(4, 7, 8), torch.randn(4, 7, 3),
                               torch.randn(5, 7)), [(0.125, True, False)]),  # q * 0.125: the scale
    "cross": (Cross, lambda: (torch.randn(2, 3, 4, 8), torch.randn(2, 5, 3, 8), torch.randn(2, 3, 5, 6)),
              [(0.3, False, False)]),
    "swin_shifted": (SwinShifted, lambda: qkv(8, 2, lq=6, lk=6), [(0.3, True, False)]),
    "eager_causal_min": (EagerCausal, lambda: qkv(2, 2, lq=5, lk=5), [(0.25, False, True)]),
    "t5_two_masks": (TwoMasks, lambda: qkv(2, 2, lq=5, lk=5) + (
        torch.randn(1, 2, 5, 5),
        torch.arange(5).expand(2, 1, 1, 5) < torch.tensor([3, 5]).view(2, 1, 1, 1)),
        [(1.0, True, False)]),
    "scaled_q_view": (ScaledQView, lambda: (torch.randn(2, 5, 16),), [(8 ** -0.5, False, False)]),
}


def test_hand_written():
    model, inputs = many(HAND_WRITTEN)
    gm = captured(model, *inputs)
    result = run_checked(gm, inputs)
    want = [w for entry in HAND_WRITTEN.values() for w in entry[2]]
    assert result.rewrites == len(want), result.notes
    assert not [n for n in result.notes if n.startswith("refused")], result.notes
    assert count(gm, *SOFTMAX, aten.matmul.default, aten.bmm.default) == 0, gm.code
    got = sdpas(gm)
    for node, (scale, has_mask, causal) in zip(got, want, strict=True):
        assert math.isclose(node.kwargs["scale"], scale, rel_tol=1e-6)
        assert (node.kwargs["attn_mask"] is not None) == has_mask
        assert node.kwargs["is_causal"] == causal and node.kwargs["dropout_p"] == 0.0
    # nanoGPT's masked_fill(tril == 0, -inf): SDPA keeps logical_not(cond) (a constant, folded
    # mask is is_causal instead: test_drawn_attention and test_zoo_tiny[gpt2])
    assert got[1].kwargs["attn_mask"].target is aten.logical_not.default
    # Swin: bias and window mask added up into one constant (B * nW, heads, N, N), rows padded
    # to 16 and read through a slice; T5: bias and padding mask combined by one where
    swin, t5 = got[5].kwargs["attn_mask"], got[7].kwargs["attn_mask"]
    assert swin.target is aten.slice.Tensor and swin.args[0].op == "get_attr"
    assert tuple(getattr(gm, swin.args[0].target).shape) == (8, 2, 6, 16)
    assert t5.target is aten.where.ScalarOther
    # q * c, even under views (Whisper's (q_proj(x) * scaling).view().transpose()): in the scale
    assert got[5].args[0].target is not aten.mul.Tensor
    assert got[8].args[0].args[0].args[0].target is aten.linear.default, gm.code
    with torch.no_grad():
        for a, b in zip(outputs(gm, inputs), model(*inputs), strict=True):
            torch.testing.assert_close(a, b)


# -- must not fire ---------------------------------------------------------------------------

def qkv(*lead, lq=4, lk=5, e=8):
    return torch.randn(*lead, lq, e), torch.randn(*lead, lk, e), torch.randn(*lead, lk, e)


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


class TensorScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.tensor(0.35))

    def forward(self, q, k, v):
        return (q @ k.transpose(-1, -2) * self.scale).softmax(-1) @ v


def attn(q, k, v, *, pre=lambda s: s, softmax=lambda s: s.softmax(-1)):
    return softmax(pre(q @ k.transpose(-1, -2))) @ v


def returns_probs(q, k, v):
    p = (q @ k.transpose(-1, -2) / 3.0).softmax(-1)
    return p @ v, p


def returns_scores(q, k, v):
    s = q @ k.transpose(-1, -2)
    return s.softmax(-1) @ v, s


def bool_added(q, k, v, m):
    return attn(q, k, v, pre=lambda s: s + m)


REFUSALS = {
    "probs_returned": (lambda: Fn(returns_probs), lambda: qkv(2), "are a graph output (output_attentions?)"),
    "scores_returned": (lambda: Fn(returns_scores), lambda: qkv(2), "are a graph output"),
    "softmax_dim": (lambda: Fn(lambda q, k, v: attn(q, k, v, softmax=lambda s: s.softmax(-2))),
                    lambda: qkv(2, lq=5), "softmax over dim -2"),
    "softmax_float64": (lambda: Fn(lambda q, k, v: attn(q, k, v, softmax=lambda s: s.softmax(
        -1, dtype=torch.float64).float())), lambda: qkv(2), "softmax computes in torch.float64"),
    "tensor_scale": (TensorScale, lambda: qkv(2), "scaled by a tensor"),
    "bool_mask_added": (lambda: Fn(bool_added), lambda: qkv(2) + (torch.rand(4, 5) > 0.5,),
                        "adds a bool mask as a number"),
    "finite_fill": (lambda: Fn(lambda q, k, v, m: attn(q, k, v, pre=lambda s: s.masked_fill(m, -1e4))),
                    lambda: qkv(2) + (torch.rand(4, 5) > 0.5,), "fills with -10000, not -inf"),
    "fp16": (lambda: Fn(attn), lambda: tuple(t.half() for t in qkv(2)), "attention in float16"),
    "broadcast_batch": (lambda: Fn(attn), lambda: (torch.randn(2, 3, 4, 8), torch.randn(2, 1, 5, 8),
                                                   torch.randn(2, 1, 5, 8)), "batch dims differ"),
    "mask_broadcasts_scores": (lambda: Fn(lambda q, k, v, m: attn(q, k, v, pre=lambda s: s + m)),
                               lambda: qkv(2) + (torch.randn(3, 1, 4, 5),), "broadcasts the scores"),
    "runtime_mask_between_views": (lambda: Fn(lambda q, k, v, m: attn(q, k, v, pre=lambda s: (
        s.view(2, 2, 4, 5) + m).view(4, 4, 5))), lambda: qkv(4) + (torch.randn(2, 1, 4, 5),),
        "computed at run time is added between views"),
    "scale_after_mask": (lambda: Fn(lambda q, k, v, m: attn(q, k, v, pre=lambda s: (s + m) * 0.5)),
                         lambda: qkv(2) + (torch.randn(4, 5),), "scales the scores after a mask"),
}


def test_must_not_fire():
    model, inputs = many(REFUSALS)
    gm = captured(model, *inputs)
    code, before = gm.code, outputs(gm, inputs)
    result = fuse_attention.run(gm, ctx())
    gm.recompile()
    assert result.rewrites == 0 and gm.code == code
    for name, (_, _, reason) in REFUSALS.items():
        assert any(reason in note for note in result.notes), (name, reason, result.notes)
    assert all(torch.equal(a, b) for a, b in zip(outputs(gm, inputs), before))


def test_fully_masked_rows_give_zero_not_nan():
    """The one documented difference: a row with every key at -inf is NaN written out, 0 in
    SDPA. The pass keeps the graph runnable and says so in its docstring."""
    g = AtenGraph()
    q, k, v = (g.input(t) for t in qkv(1))
    cond = torch.zeros(4, 5, dtype=torch.bool)
    cond[1] = True
    s = g(aten.matmul.default, q, g(aten.permute.default, k, [0, 2, 1]))
    s = g(aten.where.self, g.input(cond), g(aten.scalar_tensor.default, float("-inf")), s)
    gm = g.build([g(aten.matmul.default, g(aten.softmax.int, s, -1), v)])
    before = outputs(gm, g.inputs)[0]
    assert fuse_attention.run(gm, ctx()).rewrites == 1
    gm.recompile()
    after = outputs(gm, g.inputs)[0]
    assert before[..., 1, :].isnan().all() and (after[..., 1, :] == 0).all()
    keep = torch.tensor([0, 2, 3])
    torch.testing.assert_close(after[..., keep, :], before[..., keep, :])


# -- SDPA calls already in the graph ------------------------------------------------------------

def repeat_kv(x, r):
    """HF's repeat_kv: (B, H, S, D) -> (B, H * r, S, D) through expand and a copy."""
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, r, n, d).reshape(b, h * r, n, d)


class Sdpas(nn.Module):
    """SDPA as HF's sdpa path and Whisper call it: q scaled before, a folded causal bool mask,
    a constant float bias whose rows are 5 wide, GQA through repeat_kv, a run-time mask."""

    def __init__(self):
        super().__init__()
        self.register_buffer("causal", torch.ones(1, 1, 5, 5, dtype=torch.bool).tril())
        self.register_buffer("bias", torch.randn(1, 4, 5, 5))

    def forward(self, q, k, v, kv, m):  # q, k, v (2, 4, 5, 8); kv (2, 2, 5, 8); m (2, 1, 5, 5)
        sdpa = F.scaled_dot_product_attention
        return (sdpa(q * 0.5, k, v),  # scale None: 0.5 / sqrt(8)
                sdpa(q, k, v, attn_mask=self.causal),
                sdpa(q, k, v, attn_mask=self.bias),
                sdpa(q, repeat_kv(kv, 2), repeat_kv(kv + 1, 2), is_causal=True),
                sdpa(q, k, v, attn_mask=m))


def sdpas_case():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 5, 8) for _ in range(3))
    inputs = (q, k, v, torch.randn(2, 2, 5, 8), torch.randn(2, 1, 5, 5))
    return captured(Sdpas(), *inputs), inputs


@pytest.mark.parametrize("device,gqa", [("cpu", False), ("cuda", True)])
def test_sdpa_calls(device, gqa):
    """q's scale moves into SDPA's; a constant causal mask becomes is_causal; a constant bias
    gets 16-aligned rows; on CUDA in half, repeat_kv goes and enable_gqa reads the shared
    heads. A run-time mask is left as it is (must not fire)."""
    from fxc.options import CompileOptions
    gm, inputs = sdpas_case()
    c = PassContext(CompileOptions(device=torch.device(device), precision="fp16"), list(inputs))
    result = passkit.run_checked(fuse_attention, gm, inputs, c, passkit.close_nan)[0]
    s = sdpas(gm)
    assert result.rewrites == 3 + gqa, result.notes
    assert math.isclose(s[0].kwargs["scale"], 0.5 / math.sqrt(8))
    assert s[0].args[0].op == "placeholder"
    assert s[1].kwargs["is_causal"] and s[1].kwargs["attn_mask"] is None
    bias = s[2].kwargs["attn_mask"]
    assert bias.target is aten.slice.Tensor and bias.meta["val"].stride()[-2] == 16
    assert s[3].kwargs.get("enable_gqa", False) == gqa
    assert (s[3].args[1].op == "placeholder") == gqa  # k itself, not its repeat
    assert s[4].args[3].op == "placeholder"  # the run-time mask, as it was
    assert count(gm, aten.clone.default) == (0 if gqa else 2)


# -- ATen graphs drawn directly: every spelling, every refusal --------------------------------

SPOILERS = ["none"] * 8 + ["probs_out", "scores_out", "scores_user", "dim", "dtype",
                           "tensor_scale", "fp16", "finite_fill", "bool_add"]


@st.composite
def attention_case(draw):
    """(graph, inputs, expected (scale, mask kind, is_causal) | reason)."""
    g, gen = AtenGraph(), torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))
    spoil = draw(st.sampled_from(SPOILERS))
    rank = draw(st.sampled_from([3, 4, 4]))
    dt = torch.float16 if spoil == "fp16" else (torch.float64 if draw(st.integers(0, 7)) == 0
                                                else torch.float32)
    lead = [draw(st.integers(1, 3)) for _ in range(rank - 2)]
    lq, lk = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    if spoil == "dim":
        lk = lq  # softmax over dim -2 must still chain into @ v
    e, ev = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    rnd = lambda *s: torch.randn(*s, generator=gen).to(dt)  # noqa: E731
    q, v = g.input(rnd(*lead, lq, e)), g.input(rnd(*lead, lk, ev))
    mm = aten.bmm.default if rank == 3 and draw(st.booleans()) else aten.matmul.default
    k_form = draw(st.sampled_from(["permute", "permute_4d_layout", "transpose", "given"]))
    if k_form == "permute_4d_layout" and rank == 4:  # keys as (B, L, H, E): one permute
        kt = g(aten.permute.default, g.input(rnd(lead[0], lk, lead[1], e)), [0, 2, 3, 1])
    elif k_form == "transpose":
        kt = g(aten.transpose.int, g.input(rnd(*lead, lk, e)), -1, -2)
    elif k_form == "given":  # k^T itself is the input
        kt = g.input(rnd(*lead, e, lk))
    else:
        swap = list(range(rank - 2)) + [rank - 1, rank - 2]
        kt = g(aten.permute.default, g.input(rnd(*lead, lk, e)), swap)
    s = g(mm, q, kt)
    qk = s
    scale_form = draw(st.sampled_from(["none", "mul", "rmul", "div"]))
    c = draw(st.sampled_from([0.125, 1 / math.sqrt(e), 0.3, 2.0]))
    scale = 1.0
    if spoil == "tensor_scale":
        s = g(aten.mul.Tensor, s, g.const(torch.tensor(c, dtype=dt)))
    elif scale_form == "mul":
        s, scale = g(aten.mul.Tensor, s, c), c
    elif scale_form == "rmul":
        s, scale = g(aten.mul.Tensor, c, s), c
    elif scale_form == "div":
        s, scale = g(aten.div.Tensor, s, c), 1 / c
    scaled = s
    mask_form = draw(st.sampled_from(["none", "add", "add_causal_const", "fill", "fill_keep",
                                      "fill_causal_const"]))
    if spoil in ("finite_fill",):
        mask_form = "fill"
    if spoil == "bool_add":
        mask_form = "add"
    causal = False
    # mask shapes that broadcast to the scores: trailing (lq, lk), or (lead.., 1, lk), ...
    mshape = draw(st.sampled_from([(lq, lk), (1, lk), tuple(lead[:1]) + (1,) * (rank - 2) + (lk,),
                                   tuple(lead) + (lq, lk)]))
    keep = torch.rand(*mshape, generator=gen) > 0.4
    keep[..., 0] = True  # every row keeps a key: no NaN rows (see the test above)
    tril = torch.ones(lq, lk, dtype=torch.bool).tril()
    if mask_form == "add":
        if spoil == "bool_add":
            m = g.input(keep)
        else:
            m = g.input(torch.where(keep, rnd(*mshape), torch.tensor(float("-inf"), dtype=dt)))
        s = g(aten.add.Tensor, *((s, m) if draw(st.booleans()) else (m, s)))
    elif mask_form == "add_causal_const":
        causal_mask = torch.zeros(lq, lk, dtype=dt).masked_fill(~tril, float("-inf"))
        s = g(aten.add.Tensor, s, g.const(causal_mask))
        causal = True
    elif mask_form in ("fill", "fill_keep", "fill_causal_const"):
        fill = -1e4 if spoil == "finite_fill" else float("-inf")
        fill_node = draw(st.sampled_from(["scalar_tensor", "python"]))
        f = g(aten.scalar_tensor.default, fill, dtype=dt) if fill_node == "scalar_tensor" else fill
        if mask_form == "fill_causal_const":
            cond = g.const(~tril)
            causal = True
        else:
            cond = g.input(~keep if mask_form == "fill" else keep)
        if mask_form == "fill_keep":  # where(keep, scores, -inf)
            s = g(aten.where.self, cond, s, f) if fill_node == "scalar_tensor" else \
                g(aten.where.ScalarOther, cond, s, f)
        else:  # masked_fill(cond, -inf)
            s = g(aten.where.self, cond, f, s) if fill_node == "scalar_tensor" else \
                g(aten.masked_fill.Scalar, s, cond, f)
    if spoil == "dtype":
        p = g(aten.softmax.int, s, -1, torch.float64 if dt != torch.float64 else torch.float32)
        p = g(aten._to_copy.default, p, dtype=dt)
    else:
        p = g(aten.softmax.int, s, -2 if spoil == "dim" else draw(st.sampled_from([-1, rank - 1])))
    if draw(st.booleans()):
        p = g(aten.clone.default, p)
    out = g(mm, p, v)
    outs = [out]
    if spoil == "probs_out":
        outs.append(p)
    elif spoil == "scores_out":
        outs.append(qk)
    elif spoil == "scores_user":
        outs.append(g(aten.relu.default, scaled))
    want = {"probs_out": "are a graph output", "scores_out": "are a graph output",
            "scores_user": "are also used by", "dim": "softmax over dim -2",
            "dtype": "softmax computes in", "tensor_scale": "scaled by a tensor",
            "fp16": "attention in float16", "finite_fill": "not -inf",
            "bool_add": "adds a bool mask as a number"}.get(spoil)
    if want is None:
        want = (scale, mask_form, causal)
    return g.build(outs), g.inputs, want


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(attention_case())
def test_drawn_attention(case):
    gm, inputs, want = case
    code = gm.code
    if isinstance(want, str):
        result = fuse_attention.run(gm, ctx())
        gm.recompile()
        assert result.rewrites == 0 and gm.code == code
        assert any(want in note for note in result.notes), (want, result.notes, code)
        return
    scale, mask_form, causal = want
    result = run_checked(gm, inputs)
    assert result.rewrites == 1, (want, result.notes, code)
    (s,) = sdpas(gm)
    assert count(gm, *SOFTMAX) == 0, gm.code
    assert math.isclose(s.kwargs["scale"], scale, rel_tol=1e-9)
    assert s.kwargs["is_causal"] == causal
    assert (s.kwargs["attn_mask"] is None) == (mask_form == "none" or causal)


# -- fxc.testing's random graphs with attention planted ----------------------------------------

def written_attention(q, k, v, mask=None, *, scale, mask_form, dropout):
    """Attention spelled out as models write it; q, k, v normalized first (|x| <= 1) so that
    the softmax is not decided by rounding of huge logits."""
    q, k, v = (t / (t.abs().amax() + 1) for t in (q, k, v))
    s = q @ k.transpose(-1, -2)
    if scale == "div":
        s = s / math.sqrt(q.shape[-1])
    elif scale == "mul":
        s = s * 0.5
    if mask_form == "add":
        s = s + mask
    elif mask_form == "fill":
        s = s.masked_fill(mask, float("-inf"))
    p = F.softmax(s, dim=-1)
    if dropout:
        p = F.dropout(p, 0.1, training=False)
    return p @ v


def _reject_rule(b, spec):
    raise OpRejected("planted only")


ROW = OpSpec("written_attention", (torch.float32,), _reject_rule, written_attention)
BASE_OPS = [name for name in OPS if not name.startswith("written_")]


@contextlib.contextmanager
def planted_row():
    """The written attention as an op-table row, for the test's duration only."""
    OPS[ROW.name] = ROW
    try:
        yield
    finally:
        OPS.pop(ROW.name, None)


def plant_attention(b, draw):
    """Self attention on a drawn 3-d or 4-d value (q = k = v) or cross attention on fresh keys
    and values; masks: none, an additive float input, or a bool masked_fill input."""
    x = b.pick_value(draw, dtypes=(torch.float32,), min_rank=3, max_rank=4)
    shape = b.value(x).shape
    lk = shape[-2] if draw(st.booleans()) else draw(st.integers(1, 4))
    if lk == shape[-2] and draw(st.booleans()):
        k = v = x
    else:
        k = b.new_leaf(shape[:-2] + (lk, shape[-1]), torch.float32, kind="input")
        v = b.new_leaf(shape[:-2] + (lk, draw(st.integers(1, 4))), torch.float32, kind="input")
    mask_form = draw(st.sampled_from(["none", "add", "fill"]))
    ins = [x, k, v]
    if mask_form != "none":
        keep = torch.rand(shape[-2], lk) > 0.3
        keep[:, 0] = True  # no fully masked row
        t = torch.where(keep, 0.0, -1e9) if mask_form == "add" else ~keep
        ins.append(b.new_param(t, buffer=True))
    return b.add("written_attention", *ins, scale=draw(st.sampled_from(["none", "div", "mul"])),
                 mask_form=mask_form, dropout=draw(st.booleans()))


@settings(max_examples=6, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.data())
def test_generated_graphs(data):
    with planted_row():
        g = data.draw(graphs(max_ops=4, ops=BASE_OPS, allow_empty=False, plant=[plant_attention]))
    planted = [i for i in g.program.instrs if i.op == "written_attention"]
    gm = capture(g.module, g.inputs, {}).gm
    result = run_checked(gm, g.inputs)
    assert result.rewrites >= len(planted) == 1, (result.notes, g)


# -- the zoo ---------------------------------------------------------------------------------

TRANSFORMER_PASSES = ("recognize_norm_act", "fuse_attention", "merge_parallel_linear")
# What the three passes find in each zoo transformer: {pass: stats} (tiny: 2 layers).
ZOO_TINY = {
    "gpt2": {"recognize_norm_act": {"gelu_tanh": 2}, "fuse_attention": {"sdpa": 2},
             "merge_parallel_linear": {"groups": 0, "linears": 0}},
    # its own 2 SDPA, none new; their merge-heads views hold for one kernel's layout only
    "vit": {"recognize_norm_act": {}, "fuse_attention": {"sdpa": 2, "sdpa_views_reshaped": 2},
            "merge_parallel_linear": {"groups": 0, "linears": 0}},
}
ZOO_BASE = {
    "bert": (12, {}, {"groups": 12, "linears": 36}),
    "gpt2": (12, {"gelu_tanh": 12}, {"groups": 0, "linears": 0}),
    "vit": (0, {}, {"groups": 0, "linears": 0}),
    "llama": (30, {"rms_norm": 61}, {"groups": 60, "linears": 150}),
}


def leaves(out):
    import torch.utils._pytree as pytree
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def compile_zoo(name, size, verify):
    model, inputs = get(name, size)
    compiled = fxc.compile(model, inputs, verify=verify)
    records = {r.name: r for r in compiled.report_data.records}
    return model, inputs, compiled, records


@pytest.mark.parametrize("name", ZOO_TINY)
def test_zoo_tiny(name):
    model, inputs, compiled, records = compile_zoo(name, "tiny", verify=True)
    for p, stats in ZOO_TINY[name].items():
        assert records[p].stats == stats, (p, records[p].stats, records[p].notes)
    with torch.no_grad():
        for a, b in zip(leaves(compiled(*inputs)), leaves(model(*inputs)), strict=True):
            torch.testing.assert_close(a, b)
    if name == "gpt2":  # after fold_constants the causal mask is a constant: is_causal
        assert all(s.kwargs["is_causal"] for s in sdpas(compiled.graph))


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO_BASE)
def test_zoo_base_counts(name):
    """Base size, counts only (built on CPU, compiled once each)."""
    _, _, compiled, records = compile_zoo(name, "base", verify=False)
    attention, acts, merges = ZOO_BASE[name]
    assert records["fuse_attention"].rewrites == attention
    assert records["recognize_norm_act"].stats == acts
    assert records["merge_parallel_linear"].stats == merges
    assert len(sdpas(compiled.graph)) == (30 if name == "llama" else 12)
