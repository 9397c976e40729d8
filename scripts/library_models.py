"""Capture check on models from popular libraries (torchvision; transformers where installed):
compile each, random weights, and compare with eager. Prints one line a model.

    python3 scripts/library_models.py [--device cuda] [--precision fp32]
"""
from __future__ import annotations

import argparse
import time

import torch

import fxc
from fxc.timing import max_error


def torchvision_models():
    try:
        import torchvision.models as tvm
    except Exception as e:  # torchvision absent or broken beside this torch
        print(f"torchvision unavailable: {type(e).__name__}: {e}")
        return []
    img = lambda: (torch.randn(1, 3, 224, 224),)  # noqa: E731
    return [(name, lambda name=name: getattr(tvm, name)(weights=None), img) for name in
            ["resnet50", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny", "swin_t",
             "vit_b_16", "regnet_y_400mf", "densenet121"]]


def timm_models():
    try:
        import timm
    except Exception:
        return []
    img = lambda: (torch.randn(1, 3, 224, 224),)  # noqa: E731
    return [(f"timm/{name}", lambda name=name: timm.create_model(name, pretrained=False), img)
            for name in ["seresnext26d_32x4d", "efficientnet_b0", "swin_tiny_patch4_window7_224",
                         "convnext_tiny"]]


def transformers_models():
    try:
        import transformers as tf
    except Exception:
        return []
    ids = lambda: {"input_ids": torch.randint(0, 1000, (1, 32)),  # noqa: E731
                   "attention_mask": torch.ones(1, 32, dtype=torch.int64)}
    cfgs = [("bert", tf.BertConfig(num_hidden_layers=2), tf.BertModel),
            ("gpt2", tf.GPT2Config(n_layer=2, use_cache=False), tf.GPT2Model),
            ("llama", tf.LlamaConfig(num_hidden_layers=2, hidden_size=256, intermediate_size=512,
                                     num_attention_heads=4, num_key_value_heads=2, vocab_size=1000,
                                     use_cache=False),
             tf.LlamaModel)]
    return [(name, lambda c=c, k=k: k(c), ids) for name, c, k in cfgs]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="fp32")
    args = p.parse_args()
    failed = 0
    for name, build, inputs in torchvision_models() + timm_models() + transformers_models():
        torch.manual_seed(0)
        model = build().eval().to(args.device)
        raw = inputs()
        kw = {k: v.to(args.device) for k, v in raw.items()} if isinstance(raw, dict) else {}
        x = tuple(t.to(args.device) for t in raw) if not kw else ()
        t0 = time.perf_counter()
        try:
            compiled = fxc.compile(model, kw or x, precision=args.precision)
            out = compiled(*x, **kw)
        except fxc.FxcError as e:
            failed += 1
            print(f"{name:<22} FAILED {type(e).__name__}: {str(e).splitlines()[0]}")
            continue
        with torch.no_grad():
            ref = model(*x, **kw)
        abs_err, rel = max_error(out, ref)
        print(f"{name:<22} ok  compile {time.perf_counter() - t0:6.1f} s  nodes "
              f"{compiled.report_data.captured_nodes:>5}  max abs err {abs_err:.2e}  rel {rel:.2e}",
              flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
