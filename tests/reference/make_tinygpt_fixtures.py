#!/usr/bin/python3
"""PyTorch reference numbers for tests/test_tinygpt_conformance.cpp.

Builds the Tiny GPT of docs/tiny-gpt.md as a plain PyTorch module (same
parameter names), loads the checkpoint that loragrad wrote
(fixtures/tinygpt_small.safetensors), runs one fixed batch in float64 and in
float32, and writes fixtures/tinygpt_small_expected.safetensors holding:

    idx, targets                  int64 (B, t): the batch
    f64.logits, f32.logits        (B, t, V)
    f64.loss, f32.loss            0-d, mean cross entropy
    f64.grad.<name>, f32.grad.<name>   d loss / d parameter, for every parameter

Regenerate (from the repository root):

    make -C build make_tinygpt_checkpoint        # or any build dir of loragrad
    build/tests/make_tinygpt_checkpoint tests/reference/fixtures/tinygpt_small.safetensors
    /usr/bin/python3 tests/reference/make_tinygpt_fixtures.py

The first two steps are only needed when the checkpoint itself should change.
Needs torch (Debian's python3-torch; 1.13 was used) and numpy; the
safetensors files are read and written by hand below (struct + json), since
the `safetensors` package is not a dependency.
"""
import argparse
import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")

# ----------------------------------------------------------------------------
# safetensors by hand (format: docs/peft-format.md)

_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64}
_NAMES = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.int64): "I64"}


def read_safetensors(path):
    """-> (dict name -> numpy array, in file order; metadata dict)."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    metadata = header.pop("__metadata__", {})
    data = blob[8 + n:]
    tensors = {}
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        begin, end = info["data_offsets"]
        dt = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
        tensors[name] = np.frombuffer(data[begin:end], dtype=dt).reshape(info["shape"]).copy()
    return tensors, metadata


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, numpy array); metadata: dict of strings."""
    header, chunks, offset = {}, [], 0
    for name, arr in tensors:
        arr = np.ascontiguousarray(arr)
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _NAMES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)  # the data starts at a multiple of 8
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in chunks:
            f.write(raw)


# ----------------------------------------------------------------------------
# The Tiny GPT, written the way a PyTorch user would (docs/tiny-gpt.md)

class MultiHeadAttention(nn.Module):
    def __init__(self, d_model, n_head, dropout):
        super().__init__()
        self.n_head = n_head
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.o_proj = nn.Linear(d_model, d_model)
        self.attn_drop = nn.Dropout(dropout)   # loragrad drops the attention output
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x):
        B, T, C = x.shape
        H, hd = self.n_head, C // self.n_head
        q = self.q_proj(x).view(B, T, H, hd).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, H, hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, H, hd).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)          # (B, H, T, T)
        causal = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device))
        att = F.softmax(att.masked_fill(~causal, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.o_proj(self.attn_drop(y)))


class FFN(nn.Module):
    def __init__(self, d_model, d_ff, dropout):
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_ff)
        self.fc_out = nn.Linear(d_ff, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.fc_out(F.gelu(self.fc_in(x), approximate="tanh")))


class TransformerBlock(nn.Module):
    def __init__(self, d_model, n_head, d_ff, dropout):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model, eps=1e-5)
        self.attn = MultiHeadAttention(d_model, n_head, dropout)
        self.ln2 = nn.LayerNorm(d_model, eps=1e-5)
        self.mlp = FFN(d_model, d_ff, dropout)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab_size, block_size, d_model, n_layer, n_head, d_ff, dropout=0.0):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(block_size, d_model)
        self.emb_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, n_head, d_ff, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model, eps=1e-5)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.emb_drop(self.tok_emb(idx) + self.pos_emb.weight[:t])
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


# ----------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=os.path.join(FIXTURES, "tinygpt_small.safetensors"))
    ap.add_argument("--out", default=os.path.join(FIXTURES, "tinygpt_small_expected.safetensors"))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=12, help="t, below block_size so pos_emb is cropped")
    args = ap.parse_args()

    params, meta = read_safetensors(args.checkpoint)
    hp = {k: int(meta[k]) for k in ("vocab_size", "block_size", "d_model", "n_layer", "n_head", "d_ff")}
    assert args.seq <= hp["block_size"]

    gen = torch.Generator().manual_seed(1234)
    idx = torch.randint(0, hp["vocab_size"], (args.batch, args.seq), generator=gen)
    targets = torch.randint(0, hp["vocab_size"], (args.batch, args.seq), generator=gen)

    out = [("idx", idx.numpy()), ("targets", targets.numpy())]
    for dtype, tag in ((torch.float64, "f64"), (torch.float32, "f32")):
        model = TinyGPT(**hp)
        # strict: every name of the checkpoint is a parameter of this module and vice versa
        model.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()}, strict=True)
        model.to(dtype).eval()
        logits = model(idx)
        loss = F.cross_entropy(logits.view(-1, hp["vocab_size"]), targets.view(-1))
        loss.backward()
        out.append((tag + ".logits", logits.detach().numpy()))
        out.append((tag + ".loss", loss.detach().numpy()))
        for name, p in model.named_parameters():
            out.append((tag + ".grad." + name, p.grad.numpy()))
        print(f"{tag}: loss {loss.item():.10f}")

    metadata = {"format": "pt", "generated_by": "tests/reference/make_tinygpt_fixtures.py",
                "torch": torch.__version__, "checkpoint": os.path.basename(args.checkpoint)}
    write_safetensors(args.out, out, metadata)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, {len(out)} tensors)")


if __name__ == "__main__":
    main()
