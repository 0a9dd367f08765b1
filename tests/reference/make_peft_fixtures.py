#!/usr/bin/env python3
"""Reference numbers from real HF PEFT for loragrad's LoRA-family tests.

Runs wherever PyTorch and PEFT are installed (not Debian packages: the outputs
are committed). Was run with PyTorch 2.11 and PEFT 0.21 on the device machine:

    python3 tests/reference/make_peft_fixtures.py            # writes tests/reference/fixtures/peft/

Writes into fixtures/peft/:

  layer_<case>.safetensors   one nn.Linear(7, 5) wrapped by PEFT, float64:
      W0 (5, 7), b0 (5), A (r, 7), B (5, r), [m (5)], x (2, 3, 7), wout (2, 3, 5),
      y = layer(x), loss = sum(y * wout), grad.A, grad.B, [grad.m], grad.x,
      merged.W (merge_and_unload's weight); metadata: r, alpha, use_rslora, use_dora.
      cases: lora, rslora, dora, dora_rslora
  layer_pissa.safetensors    PiSSA init of the same W0: A, B, residual W (sign-free checks: B@A, residual)
  layer_gaussian.safetensors gaussian init statistics are random: only shapes/scale are tested, not stored
  tinygpt_<case>.safetensors TinyGPT (fixtures/tinygpt_small.safetensors) + an adapter, float64:
      logits, loss and d loss / d every adapter parameter (PEFT's in-model names), for the
      batch in fixtures/tinygpt_small_expected.safetensors.  cases: lora_qv, dora_all
  tinygpt_<case>/            the same adapter saved by PEFT's save_pretrained (float32 file)
  nf4_*.safetensors          if bitsandbytes is importable with a GPU: a weight quantised by
                             bitsandbytes (nf4, blocksize 64, with and without double quantisation)

The other direction (an adapter saved by loragrad loads in PEFT):

    build/tests/make_loragrad_adapters tests/reference/fixtures     # loragrad writes adapters + its logits
    python3 tests/reference/make_peft_fixtures.py --check-loragrad  # PEFT loads them and compares

writes fixtures/loragrad_adapters/peft_check.txt (PEFT's verdict, committed) and
exits non-zero if PEFT's logits differ from loragrad's by more than 1e-10 relative.

Adapter values are random but rounded to float32, so the float32 adapter files
hold exactly the values the float64 numbers were computed with.
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_tinygpt_fixtures import TinyGPT, read_safetensors, write_safetensors  # noqa: E402

import peft  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

OUT = os.path.join(HERE, "fixtures", "peft")


def f32_rounded(t):
    return t.to(torch.float32).to(torch.float64)


def randomise_adapter(model, gen, scale=0.3):
    """Give every lora_A / lora_B a random value (PEFT's B = 0 would hide bugs) and
    perturb DoRA magnitudes, all rounded to float32-representable values."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(f32_rounded(torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale))
            elif "lora_magnitude_vector" in name:
                p.copy_(f32_rounded(p * (1 + 0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64))))


class One(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(7, 5)

    def forward(self, x):
        return self.proj(x)


def layer_case(name, r, alpha, use_rslora, use_dora):
    gen = torch.Generator().manual_seed(7)
    base = One().double()
    with torch.no_grad():
        base.proj.weight.copy_(f32_rounded(torch.randn(5, 7, generator=gen, dtype=torch.float64)))
        base.proj.bias.copy_(f32_rounded(torch.randn(5, generator=gen, dtype=torch.float64)))
    W0, b0 = base.proj.weight.detach().clone(), base.proj.bias.detach().clone()
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"], use_rslora=use_rslora, use_dora=use_dora,
                     lora_dropout=0.0)
    model = get_peft_model(base, cfg).double()
    randomise_adapter(model, gen)
    lay = model.base_model.model.proj
    A, B = lay.lora_A["default"].weight, lay.lora_B["default"].weight
    x = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    wout = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    y = model(x)
    loss = (y * wout).sum()
    loss.backward()
    out = [("W0", W0), ("b0", b0), ("A", A.detach()), ("B", B.detach())]
    if use_dora:
        out.append(("m", lay.lora_magnitude_vector["default"].weight.detach().clone()))
    out += [("x", x.detach()), ("wout", wout), ("y", y.detach()), ("loss", loss.detach()),
            ("grad.A", A.grad), ("grad.B", B.grad)]
    if use_dora:
        out.append(("grad.m", lay.lora_magnitude_vector["default"].weight.grad))
    out.append(("grad.x", x.grad))
    merged = model.merge_and_unload()
    out.append(("merged.W", merged.proj.weight.detach()))
    out.append(("merged.y", merged(x).detach()))
    meta = {"r": str(r), "alpha": str(alpha), "use_rslora": str(use_rslora).lower(),
            "use_dora": str(use_dora).lower(), "peft": peft.__version__, "torch": torch.__version__}
    path = os.path.join(OUT, f"layer_{name}.safetensors")
    write_safetensors(path, [(k, v.numpy()) for k, v in out], meta)
    print(f"{name}: loss {loss.item():.12f} -> {path}")


def pissa_case():
    gen = torch.Generator().manual_seed(11)
    base = One()  # PEFT computes PiSSA in float32 only
    with torch.no_grad():
        base.proj.weight.copy_(torch.randn(5, 7, generator=gen))
    W0 = base.proj.weight.detach().clone()
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["proj"], init_lora_weights="pissa")
    model = get_peft_model(base, cfg)
    lay = model.base_model.model.proj
    out = [("W0", W0), ("A", lay.lora_A["default"].weight.detach()), ("B", lay.lora_B["default"].weight.detach()),
           ("residual.W", lay.base_layer.weight.detach())]
    path = os.path.join(OUT, "layer_pissa.safetensors")
    write_safetensors(path, [(k, v.to(torch.float64).numpy()) for k, v in out], {"r": "2", "alpha": "4"})
    print(f"pissa -> {path}")


def tinygpt_case(name, cfg, ckpt, batch):
    params, meta = ckpt
    hp = {k: int(meta[k]) for k in ("vocab_size", "block_size", "d_model", "n_layer", "n_head", "d_ff")}
    model = TinyGPT(**hp)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()}, strict=True)
    model = get_peft_model(model.double(), cfg).double()
    randomise_adapter(model, torch.Generator().manual_seed(3), scale=0.1)
    model.eval()
    idx, targets = batch
    logits = model(idx)
    loss = F.cross_entropy(logits.view(-1, hp["vocab_size"]), targets.view(-1))
    loss.backward()
    out = [("logits", logits.detach()), ("loss", loss.detach())]
    for pname, p in model.named_parameters():
        if p.requires_grad:
            out.append(("grad." + pname, p.grad))
            out.append(("value." + pname, p.detach()))
    path = os.path.join(OUT, f"tinygpt_{name}.safetensors")
    write_safetensors(path, [(k, v.numpy()) for k, v in out], {"peft": peft.__version__, "torch": torch.__version__})
    # PEFT's own file, as a user would have it (float32)
    model.float().save_pretrained(os.path.join(OUT, f"tinygpt_{name}"))
    print(f"tinygpt {name}: loss {loss.item():.12f} -> {path}")


def nf4_case():
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as bf
    except Exception as e:  # noqa: BLE001
        print(f"bitsandbytes not available ({e}); NF4 fixtures not written")
        return
    if not torch.cuda.is_available():
        print("no GPU; NF4 fixtures not written")
        return
    gen = torch.Generator().manual_seed(5)
    W = torch.randn(48, 40, generator=gen) * 0.05          # 1920 elements: 30 blocks of 64
    W[3, 7] = 0.0
    W[10, :] *= 20                                          # one row with a large scale
    for dq in (False, True):
        q, st = bf.quantize_4bit(W.cuda(), blocksize=64, quant_type="nf4", compress_statistics=dq)
        deq = bf.dequantize_4bit(q, st, quant_type="nf4").cpu()
        out = [("W", W.numpy()), ("packed", q.cpu().numpy().astype(np.int64).reshape(-1)),
               ("dequant", deq.numpy()), ("code", st.code.cpu().numpy())]
        if dq:
            out += [("absmax_q", st.absmax.cpu().numpy().astype(np.int64)), ("offset", np.array(st.offset.cpu().item(), dtype=np.float32)),
                    ("nested_absmax", st.state2.absmax.cpu().numpy()), ("nested_code", st.state2.code.cpu().numpy())]
        else:
            out += [("absmax", st.absmax.cpu().numpy())]
        path = os.path.join(OUT, f"nf4_{'dq' if dq else 'plain'}.safetensors")
        write_safetensors(path, out, {"bitsandbytes": bnb.__version__, "blocksize": "64"})
        print(f"nf4 dq={dq} -> {path}")
    # bitsandbytes' signed dynamic map, for the double-quantisation code book
    dm = bf.create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)
    write_safetensors(os.path.join(OUT, "dynamic_map.safetensors"), [("map", dm.numpy())], {"bitsandbytes": bnb.__version__})


def check_loragrad_adapters():
    from peft import PeftModel
    root = os.path.join(HERE, "fixtures", "loragrad_adapters")
    params, meta = read_safetensors(os.path.join(HERE, "fixtures", "tinygpt_small.safetensors"))
    exp, _ = read_safetensors(os.path.join(HERE, "fixtures", "tinygpt_small_expected.safetensors"))
    idx = torch.from_numpy(exp["idx"])
    hp = {k: int(meta[k]) for k in ("vocab_size", "block_size", "d_model", "n_layer", "n_head", "d_ff")}
    lines, ok = [f"peft {peft.__version__}, torch {torch.__version__}"], True
    for case in sorted(os.listdir(root)):
        d = os.path.join(root, case)
        if not os.path.isdir(d):
            continue
        model = TinyGPT(**hp)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()}, strict=True)
        model = PeftModel.from_pretrained(model.double(), d).double().eval()
        with torch.no_grad():
            logits = model(idx)
        ref = torch.from_numpy(read_safetensors(os.path.join(d, "expected.safetensors"))[0]["logits"])
        rel = ((logits - ref).abs().max() / ref.abs().max()).item()
        n_lora = sum(1 for n, _ in model.named_parameters() if "lora_" in n)
        good = rel <= 1e-10 and n_lora > 0
        ok = ok and good
        lines.append(f"{case}: PeftModel.from_pretrained loaded {n_lora} adapter tensors; "
                     f"max |PEFT - loragrad| / max |logits| = {rel:.3e} -> {'ok' if good else 'FAIL'}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    with open(os.path.join(root, "peft_check.txt"), "w") as f:
        f.write(text)
    sys.exit(0 if ok else 1)


def main():
    if "--check-loragrad" in sys.argv[1:]:
        check_loragrad_adapters()
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    layer_case("lora", 3, 6, False, False)
    layer_case("rslora", 4, 6, True, False)
    layer_case("dora", 3, 6, False, True)
    layer_case("dora_rslora", 4, 6, True, True)
    pissa_case()
    ckpt = read_safetensors(os.path.join(HERE, "fixtures", "tinygpt_small.safetensors"))
    exp, _ = read_safetensors(os.path.join(HERE, "fixtures", "tinygpt_small_expected.safetensors"))
    batch = (torch.from_numpy(exp["idx"]), torch.from_numpy(exp["targets"]))
    tinygpt_case("lora_qv", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), ckpt, batch)
    tinygpt_case("dora_all", LoraConfig(r=4, lora_alpha=8, use_rslora=True, use_dora=True,
                                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "fc_in", "fc_out"]),
                 ckpt, batch)
    nf4_case()


if __name__ == "__main__":
    main()
