"""The pattern passes on library code: the forms torchvision, timm and transformers write, at tiny
sizes (one or two layers), captured as fxc captures them and run through the pipeline's passes up
to fuse_attention. Each test checks what fires (structure), that nothing is refused, the numbers
against eager, and the compile report's sections on what fired and what is left.

Skipped where the library is not installed (CI installs fxc[garden]).
"""
import pytest
import torch
import torch.nn as nn

import fxc
from fxc.capture import capture
from fxc.options import CompileOptions
from fxc.passes import PIPELINE, PassContext, run_pipeline
from fxc.report import coverage, is_view, op_census

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default
UP_TO_ATTENTION = ("dce", "noops", "fold_constants", "cse", "recognize_norm_act", "fuse_attention")


def library(name):
    from fxc.models.garden import load
    try:
        return load(name)
    except ImportError as e:
        pytest.skip(f"{name}: {e}")


def passes(model, inputs, device="cpu", precision="fp32"):
    """(graph after the passes up to fuse_attention, {pass: record}); the graph's outputs are
    checked against eager FP32."""
    torch.manual_seed(0)
    gm = capture(model.eval(), inputs, {}).gm
    opts = CompileOptions(device=torch.device(device), precision=precision)
    ctx = PassContext(opts, list(inputs))
    records = run_pipeline(gm, ctx, [p for p in PIPELINE if p.name in UP_TO_ATTENTION])
    gm.recompile()
    with torch.no_grad():
        got, want = gm(*inputs), model(*inputs)
    got = got if isinstance(got, (tuple, list)) else (got,)
    want = want if isinstance(want, (tuple, list)) else (want,)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    return gm, {r.name: r for r in records}


def calls(gm, *targets):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in targets]


def refused(record):
    return [n for n in record.notes if n.startswith("refused")]


# -- torchvision Swin: shifted windows -----------------------------------------------------------

def test_torchvision_swin_shifted_windows():
    """Two Swin blocks (unshifted, shifted): both become SDPA; the shifted one's relative
    position bias and window mask fold into one constant (nW, heads, N, N); nothing of the
    bias gather or the mask arithmetic is left."""
    library("torchvision")
    from torchvision.models.swin_transformer import SwinTransformerBlock
    blocks = nn.Sequential(*(SwinTransformerBlock(16, 2, [4, 4], [s, s]) for s in (0, 2)))
    x = torch.randn(1, 8, 8, 16)  # (B, H, W, C): 4 windows of 4x4
    gm, rec = passes(blocks, (x,))
    assert rec["fuse_attention"].rewrites == 2 and not refused(rec["fuse_attention"])
    assert not calls(gm, aten.softmax.int, aten.matmul.default, aten.index.Tensor, aten.sub.Tensor)
    masks = [s.kwargs["attn_mask"] for s in calls(gm, SDPA)]
    assert [tuple(m.meta["val"].shape) for m in masks] == [(1, 2, 16, 16), (4, 2, 16, 16)]
    assert all(m.op == "get_attr" for m in masks)  # 16 keys: rows already aligned, no slice


# -- timm ViT: the fused_attn=False path and layer scale ----------------------------------------

def test_timm_vit_eager_attention_and_layer_scale():
    """timm's Attention with fused_attn=False: q * scale, q @ k^T, softmax, @ v -> SDPA with the
    scale; LayerScale (init_values) after attn.proj and mlp.fc2: folded into those linears."""
    library("timm")
    from timm.models.vision_transformer import VisionTransformer
    from fxc.models.garden._libs import nontrivial_
    model = VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                              num_classes=4, init_values=0.1)
    nontrivial_(model)  # zero biases and equal gammas would be merged by cse, as if tied
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    gm, rec = passes(model, (torch.randn(1, 3, 16, 16),))
    assert rec["fuse_attention"].rewrites == 1 and not refused(rec["fuse_attention"])
    (s,) = calls(gm, SDPA)
    assert s.kwargs["scale"] == 16 ** -0.5 and s.args[0].target is not aten.mul.Tensor
    assert rec["recognize_norm_act"].stats == {"layer_scale": 2}
    assert not calls(gm, aten.mul.Tensor, aten.softmax.int)


# -- transformers: HF's sdpa and eager paths -----------------------------------------------------

def hf(cls, config, attn="sdpa", **kw):
    tf = library("transformers")
    model = getattr(tf, cls)._from_config(getattr(tf, config)(**kw), attn_implementation=attn)
    return model.eval()


class Hidden(nn.Module):
    """The model's last hidden state (or logits) as a tensor."""

    def __init__(self, model, field="last_hidden_state", **call):
        super().__init__()
        self.model, self.field, self.call = model, field, call

    def forward(self, *args):
        return self.model(*args, **self.call, return_dict=True)[self.field]


LLAMA = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)


def test_llama_sdpa_causal_gqa_rmsnorm_silu():
    """Llama (HF sdpa): the folded causal mask becomes is_causal; on CUDA in half the repeated
    k/v heads go (enable_gqa); RMSNorm (x.to(float32), pow(2).mean, rsqrt, weight *) is
    aten.rms_norm."""
    model = Hidden(hf("LlamaForCausalLM", "LlamaConfig", **LLAMA, use_cache=False), "logits",
                   use_cache=False)
    ids = torch.randint(3, 64, (2, 8))
    gm, rec = passes(model, (ids,), device="cuda", precision="fp16")  # options only: runs on CPU
    (s,) = calls(gm, SDPA)
    assert s.kwargs["is_causal"] and s.kwargs["attn_mask"] is None and s.kwargs["enable_gqa"]
    assert not calls(gm, aten.clone.default, aten.expand.default)  # repeat_kv's copies: gone
    assert rec["recognize_norm_act"].stats == {"rms_norm": 3}  # F.silu is captured whole
    assert not calls(gm, aten.rsqrt.default, aten.pow.Tensor_Scalar, aten.sigmoid.default)
    assert len(calls(gm, aten.silu.default)) == 1


def test_gpt2_eager_finfo_min_causal_mask():
    """GPT-2 (HF eager): q @ k^T * scale + a folded causal mask of finfo.min -> is_causal."""
    model = Hidden(hf("GPT2LMHeadModel", "GPT2Config", "eager", vocab_size=64, n_embd=32,
                      n_layer=1, n_head=2, n_positions=32), "logits", use_cache=False)
    gm, rec = passes(model, (torch.randint(0, 64, (2, 8)),))
    assert rec["fuse_attention"].rewrites == 1 and not refused(rec["fuse_attention"])
    (s,) = calls(gm, SDPA)
    assert s.kwargs["is_causal"] and s.kwargs["scale"] == 0.25
    assert rec["recognize_norm_act"].stats == {"gelu_tanh": 1}  # gelu_new written out


def test_t5_eager_position_bias_unscaled():
    """T5 encoder (HF eager): scores + (position bias + padding mask), no scaling: scale=1;
    T5LayerNorm is RMSNorm."""
    model = Hidden(hf("T5EncoderModel", "T5Config", "eager", vocab_size=64, d_model=32, d_kv=16,
                      d_ff=64, num_layers=1, num_heads=2, relative_attention_num_buckets=8,
                      relative_attention_max_distance=16, feed_forward_proj="relu"))
    ids, keep = torch.randint(3, 64, (2, 8)), torch.ones(2, 8, dtype=torch.long)
    keep[1, 5:] = 0
    gm, rec = passes(model, (ids, keep))
    assert rec["fuse_attention"].rewrites == 1 and not refused(rec["fuse_attention"])
    (s,) = calls(gm, SDPA)
    assert s.kwargs["scale"] == 1.0 and s.kwargs["attn_mask"] is not None
    assert rec["recognize_norm_act"].stats == {"rms_norm": 3}


def test_whisper_scaled_q_moves_into_sdpa():
    """Whisper encoder (HF sdpa): SDPA((q_proj(h) * scaling).view().transpose(), ..., scale=1)
    -> SDPA(q_proj(h).view().transpose(), ..., scale=scaling): one multiply a layer less."""
    tf = library("transformers")
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
    config = tf.WhisperConfig(d_model=32, encoder_layers=1, encoder_attention_heads=2,
                              encoder_ffn_dim=64, num_mel_bins=16, max_source_positions=8)
    model = Hidden(WhisperEncoder._from_config(config, attn_implementation="sdpa").eval())
    gm, rec = passes(model, (torch.randn(1, 16, 16),))
    (s,) = calls(gm, SDPA)
    assert s.kwargs["scale"] == 0.25 and not calls(gm, aten.mul.Tensor)


# -- the compile report: what fired, what is left ------------------------------------------------

def test_report_says_what_fired_and_what_is_left():
    from fxc.models import get
    model, inputs = get("gpt2", size="tiny")
    compiled = fxc.compile(model, inputs, backend="torch")
    text = compiled.report()
    fired = text.split("rewrites that fired:")[1].split("ops left after the passes:")[0]
    assert "fuse_attention: 2 rewrite(s) (attention x2)" in fired
    assert "recognize_norm_act: 2 rewrite(s) (gelu x2)" in fired
    assert "refused" not in fired
    left = text.split("ops left after the passes:")[1]
    assert "aten.scaled_dot_product_attention x2" in left and "fxc.linear_act x2" in left
    assert "other ATen ops, one kernel each:" in left and "aten.add.Tensor x" in left
    ops = compiled.report_data.extra["ops_left"]
    assert ops["views"] and not any("view" in op or "permute" in op for op in ops["aten"])
    assert sum(ops["library"].values()) + sum(ops["fxc"].values()) + sum(ops["aten"].values()) \
        + sum(ops["other"].values()) + sum(ops["views"].values()) == sum(
        1 for n in compiled.graph.graph.nodes if n.op == "call_function")


def test_op_census_counts_kernels_not_views():
    """Views, getitem and splits launch nothing; an in-place op writes: it is a kernel."""
    import operator

    from passkit import AtenGraph
    g = AtenGraph()
    x = g.input(torch.randn(4, 6))
    v = g(aten.view.default, x, [6, 4])
    p = g(aten.permute.default, v, [1, 0])
    parts = g(aten.split_with_sizes.default, p, [2, 2])
    a = g(operator.getitem, parts, 0)
    s = g(aten.add.Tensor, a, 1.0)
    r = g(aten.relu_.default, g(aten.mul.Tensor, s, 2.0))
    gm = g.build([r, g(aten.linear.default, p, g.const(torch.randn(3, 6)))])
    groups = op_census(gm)
    assert dict(groups["aten"]) == {"aten.add.Tensor": 1, "aten.mul.Tensor": 1, "aten.relu_": 1}
    assert dict(groups["library"]) == {"aten.linear": 1}
    assert sum(groups["views"].values()) == 4
    assert not is_view(r) and is_view(p)
    title, lines = coverage(gm, [])[1]
    assert lines[-1].endswith(": 4") and "aten.add.Tensor x1" in lines[4]
    assert lines[0].startswith("7 nodes after the passes") and "4 kernels + 3 views; 1 getitem" in lines[0]
