#!/usr/bin/python3
"""PyTorch reference trajectory for tests/test_adamw_conformance.cpp.

Loads the committed Tiny GPT checkpoint (fixtures/tinygpt_small.safetensors)
into the PyTorch module of make_tinygpt_fixtures.py, once in float64 and once
in float32, and trains it for 5 steps with torch.optim.AdamW the usual GPT way:

    lr 1e-2, betas (0.9, 0.95), eps 1e-8, two parameter groups:
      "decay"     weight_decay 0.1   matrices and embeddings
      "no_decay"  weight_decay 0     biases and LayerNorm weights (by name:
                                     ".bias", or a module called ln*)

Step s (0-based) computes the loss of batch s, backpropagates and updates.
Writes fixtures/adamw_trajectory.safetensors holding:

    idx, targets             int64 (S, B, t): the S batches
    f64.loss, f32.loss       (S,): the loss at every step, before its update
    f64.update_norm,         (S, P): ||p after step s - p before step s|| for
    f32.update_norm            each of the P parameters (named_parameters
                               order), to tell which step and tensor went wrong
    f64.final.<name>         float64: every parameter after the last step

Why there is no f32.final: one float64 copy of the 42k parameters is 339 KB,
and the fixtures must stay under 500 KB. The float32 run is checked at 1e-4
against f64.final instead; this script asserts that PyTorch's own float32
parameters are within 1e-5 of it (relative to each tensor's largest value),
except the attention key biases. Those have a zero gradient in exact
arithmetic (softmax ignores a shift shared by all keys), so AdamW divides pure
round-off by itself: in float32 they wander by up to lr per step in any
implementation, and the test only checks that they stay within that bound.

Regenerate (from the repository root; needs torch 1.13 and numpy, as for
make_tinygpt_fixtures.py, whose safetensors reader/writer and model this uses):

    /usr/bin/python3 tests/reference/make_adamw_fixtures.py
"""
import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F

from make_tinygpt_fixtures import FIXTURES, TinyGPT, read_safetensors, write_safetensors

STEPS, BATCH, SEQ = 5, 2, 12
LR, BETAS, EPS, WEIGHT_DECAY = 1e-2, (0.9, 0.95), 1e-8, 0.1


def no_decay(name):
    """Biases and LayerNorm weights (ln1, ln2, ln_f) are not decayed."""
    return name.endswith(".bias") or name.split(".")[-2].startswith("ln")


def key_bias(name):
    """A parameter whose gradient is zero in exact arithmetic (see above)."""
    return name.endswith("attn.k_proj.bias")


def train(params, hp, idx, targets, dtype):
    """-> (losses (S,), update norms (S, P), {name: final parameter as float64})."""
    model = TinyGPT(**hp)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()}, strict=True)
    model.to(dtype).eval()  # dropout is 0 anyway
    named = list(model.named_parameters())
    # the name rule picks exactly the vectors, as the usual `p.dim() < 2` rule would
    assert all(no_decay(n) == (p.dim() == 1) for n, p in named)
    opt = torch.optim.AdamW([{"params": [p for n, p in named if not no_decay(n)], "weight_decay": WEIGHT_DECAY},
                             {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0}],
                            lr=LR, betas=BETAS, eps=EPS, foreach=False)
    losses, norms = [], []
    for s in range(STEPS):
        opt.zero_grad(set_to_none=True)
        logits = model(idx[s])
        loss = F.cross_entropy(logits.view(-1, hp["vocab_size"]), targets[s].view(-1))
        loss.backward()
        before = [p.detach().clone() for _, p in named]
        opt.step()
        losses.append(loss.item())
        norms.append([torch.linalg.vector_norm(p.detach() - b).item() for (_, p), b in zip(named, before)])
    final = {n: p.detach().to(torch.float64).numpy().copy() for n, p in named}
    return np.array(losses), np.array(norms), final


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=os.path.join(FIXTURES, "tinygpt_small.safetensors"))
    ap.add_argument("--out", default=os.path.join(FIXTURES, "adamw_trajectory.safetensors"))
    args = ap.parse_args()

    params, meta = read_safetensors(args.checkpoint)
    hp = {k: int(meta[k]) for k in ("vocab_size", "block_size", "d_model", "n_layer", "n_head", "d_ff")}
    assert SEQ <= hp["block_size"]

    gen = torch.Generator().manual_seed(2025)
    idx = torch.randint(0, hp["vocab_size"], (STEPS, BATCH, SEQ), generator=gen)
    targets = torch.randint(0, hp["vocab_size"], (STEPS, BATCH, SEQ), generator=gen)

    loss64, norms64, final64 = train(params, hp, idx, targets, torch.float64)
    loss32, norms32, final32 = train(params, hp, idx, targets, torch.float32)
    print("f64 losses", " ".join(f"{v:.12f}" for v in loss64))
    print("f32 losses", " ".join(f"{v:.7f}" for v in loss32))

    # f64.final stands in for the float32 reference (see the docstring): check that it may.
    worst = 0.0
    for name, want in final64.items():
        err = np.abs(final32[name] - want).max() / np.abs(want).max()
        if key_bias(name):
            print(f"  {name}: float32 differs by {err:.1e} relative (round-off / eps, as expected)")
            assert np.abs(final32[name] - params[name]).max() <= STEPS * LR
        else:
            worst = max(worst, err)
    print(f"float32 vs float64 parameters, worst relative difference {worst:.2e}")
    assert worst < 1e-5

    out = [("idx", idx.numpy()), ("targets", targets.numpy()),
           ("f64.loss", loss64), ("f32.loss", loss32.astype(np.float32)),
           ("f64.update_norm", norms64), ("f32.update_norm", norms32.astype(np.float32))]
    out += [("f64.final." + name, p) for name, p in final64.items()]
    metadata = {"format": "pt", "generated_by": "tests/reference/make_adamw_fixtures.py",
                "torch": torch.__version__, "checkpoint": os.path.basename(args.checkpoint),
                "lr": repr(LR), "beta1": repr(BETAS[0]), "beta2": repr(BETAS[1]), "eps": repr(EPS),
                "weight_decay": repr(WEIGHT_DECAY)}
    write_safetensors(args.out, out, metadata)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, {len(out)} tensors)")


if __name__ == "__main__":
    main()
