#!/usr/bin/python3
"""The reference workload in PyTorch: the peer `loragrad bench` is compared with.

The Tiny GPT is tests/reference/make_tinygpt_fixtures.py's (the module the
conformance tests hold loragrad to, same layout and names); LoRA and DoRA are
written here in plain torch the way HF PEFT computes them (Debian has no
peft package), on the targets the workload names. One step is what
`loragrad bench` times: zero the gradients, forward, cross entropy, backward,
AdamW (lr 2e-4, weight decay 0). Random bytes from a fixed seed; warm-up
steps, then the median of the timed ones. Prints one JSON object.

    /usr/bin/python3 bench/torch_workload.py --workload S --method lora --threads 2
    /usr/bin/python3 bench/torch_workload.py --workload M --autocast-bf16 --threads 2

Its speed depends on the BLAS PyTorch's Linear layers call (Debian's
python3-torch goes through OpenBLAS): bench/run_workload.py runs it as
installed ("default") and tuned (OpenMP OpenBLAS with AVX-512 kernels:
LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp,
OPENBLAS_CORETYPE=SkylakeX, OMP_NUM_THREADS=threads). The JSON says which
OpenBLAS was loaded and which kernels it chose.

qlora has no counterpart here: 4-bit NF4 layers come from bitsandbytes,
which Debian does not package (and which had no CPU path for PyTorch 1.13).
"""
import argparse
import ctypes
import json
import math
import os
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from make_tinygpt_fixtures import TinyGPT  # noqa: E402  (one copy of the model)

# The spec's table (docs/workload.md); `loragrad bench` holds the same
# (app/src/workload.cpp). bench/run_workload.py passes loragrad's dimensions
# explicitly, so a comparison never depends on the two copies agreeing.
PRESETS = {
    "S": dict(d_model=128, layers=4, heads=4, seq=128, batch=16, r=8, alpha=16.0,
              targets="q_proj,k_proj,v_proj,o_proj"),
    "M": dict(d_model=256, layers=6, heads=8, seq=256, batch=8, r=16, alpha=32.0,
              targets="q_proj,k_proj,v_proj,o_proj,fc_in,fc_out"),
}
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "fc_in", "fc_out")
VOCAB = 256


class LoraLinear(nn.Module):
    """PEFT's lora.Linear (dropout 0, init_lora_weights=True), and its DoRA:
    peft/tuners/lora/layer.py and dora.py (DoraLinearLayer.forward)."""

    def __init__(self, base, r, alpha, dora):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / r
        self.dora = dora
        if dora:  # the magnitude starts at the row norms of W + s B A (= W: B is 0)
            with torch.no_grad():
                w = base.weight + self.scaling * (self.lora_B.weight @ self.lora_A.weight)
            self.lora_magnitude_vector = nn.Parameter(w.norm(p=2, dim=1))

    def forward(self, x):
        result = self.base_layer(x)
        lora_result = self.lora_B(self.lora_A(x))
        if not self.dora:
            return result + lora_result * self.scaling
        # DoRA: m / ||W + s B A||_row (the norm detached, as PEFT and the paper
        # do) rescales the base output and the LoRA output; the base output is
        # reused without its bias.
        lora_weight = self.lora_B.weight @ self.lora_A.weight
        weight_norm = (self.base_layer.weight + self.scaling * lora_weight).norm(p=2, dim=1).detach()
        mag_norm_scale = (self.lora_magnitude_vector / weight_norm).view(1, -1)
        base_result = result if self.base_layer.bias is None else result - self.base_layer.bias
        return result + (mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * self.scaling


def apply_lora(model, targets, r, alpha, dora):
    """Freeze the model, then wrap each targeted Linear (by its last name)."""
    model.requires_grad_(False)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if name in targets and isinstance(child, nn.Linear):
                setattr(module, name, LoraLinear(child, r, alpha, dora))


def openblas_info():
    """The OpenBLAS this process loaded (from /proc/self/maps), and the
    kernels it chose: with an unknown CPU, Debian's 0.3.21 falls back to its
    oldest ("Prescott") unless OPENBLAS_CORETYPE says otherwise."""
    path = None
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and "blas" in os.path.basename(parts[5]):
                path = parts[5]
                if "openblas" in path:
                    break
    core = config = None
    if path:
        try:
            lib = ctypes.CDLL(path)
            lib.openblas_get_corename.restype = ctypes.c_char_p
            lib.openblas_get_config.restype = ctypes.c_char_p
            core = lib.openblas_get_corename().decode()
            config = lib.openblas_get_config().decode().strip()
        except (OSError, AttributeError):
            pass
    return {"blas_library": path, "openblas_core": core, "openblas_config": config}


def load_average():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=sorted(PRESETS), default="S",
                    help="the spec's configuration (explicit dimensions below override)")
    for flag, kind in (("--d-model", int), ("--layers", int), ("--heads", int), ("--seq", int),
                       ("--batch", int), ("--r", int), ("--alpha", float), ("--targets", str)):
        ap.add_argument(flag, type=kind)
    ap.add_argument("--method", choices=("lora", "dora", "full", "qlora"), default="lora")
    ap.add_argument("--autocast-bf16", action="store_true",
                    help='mixed precision: torch.autocast("cpu", dtype=torch.bfloat16)')
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.method == "qlora":
        ap.exit(2, "torch_workload.py: --method qlora: no PyTorch counterpart here (NF4 layers come from "
                   "bitsandbytes, which Debian does not package)\n")
    if args.threads < 1 or args.steps < 1 or args.warmup < 0:
        ap.exit(2, "torch_workload.py: --threads and --steps must be >= 1, --warmup >= 0\n")

    w = dict(PRESETS[args.workload])
    custom = False
    for key in w:
        value = getattr(args, key)
        if value is not None:
            w[key], custom = value, True
    targets = [t for t in w["targets"].split(",") if t]
    if w["targets"] == "all-linear":
        targets = list(LINEARS)
    bad = [t for t in targets if t not in LINEARS]
    if bad or w["d_model"] % w["heads"]:
        ap.exit(2, f"torch_workload.py: bad workload: targets {bad} unknown or --heads does not divide --d-model\n")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    load_start = load_average()
    model = TinyGPT(VOCAB, w["seq"], w["d_model"], w["layers"], w["heads"], 4 * w["d_model"], dropout=0.0)
    for name, p in model.named_parameters():  # the spec's init: N(0, 0.02), zero biases, unit LayerNorm gains
        if name.endswith("weight") and p.dim() == 2:
            nn.init.normal_(p, 0.0, 0.02)
    if args.method == "full":
        model.requires_grad_(True)
    else:
        apply_lora(model, targets, w["r"], w["alpha"], args.method == "dora")
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=2e-4, weight_decay=0.0)

    gen = torch.Generator().manual_seed(args.seed)
    data = torch.randint(0, VOCAB, (w["batch"], w["seq"] + 1), generator=gen)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast_bf16):
            logits = model(x)
            loss = F.cross_entropy(logits.view(-1, VOCAB).float(), y.view(-1))
        loss.backward()
        opt.step()
        return loss.item()

    ms, cpu_ms, losses = [], [], []
    for i in range(args.warmup + args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        losses.append(step())
        c1, t1 = time.process_time(), time.perf_counter()
        if i >= args.warmup:
            ms.append((t1 - t0) * 1e3)
            cpu_ms.append((c1 - c0) * 1e3)

    median = statistics.median(ms)
    out = {
        "program": "pytorch",
        "version": torch.__version__,
        "workload": {"name": "custom" if custom else args.workload, "vocab": VOCAB, "d_model": w["d_model"],
                     "n_layer": w["layers"], "n_head": w["heads"], "d_ff": 4 * w["d_model"], "seq": w["seq"],
                     "batch": w["batch"], "r": w["r"], "alpha": w["alpha"], "targets": targets},
        "method": args.method,
        "precision": "bf16 autocast" if args.autocast_bf16 else "fp32",
        "threads": torch.get_num_threads(),
        "warmup": args.warmup,
        "steps": args.steps,
        "seed": args.seed,
        "ms_per_step": median,
        "ms_min": min(ms),
        "ms_max": max(ms),
        "ms_steps": ms,
        "cpu_ms_per_step": statistics.median(cpu_ms),
        "tokens_per_step": w["batch"] * w["seq"],
        "tokens_per_s": w["batch"] * w["seq"] / (median * 1e-3),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "trainable_params": sum(p.numel() for p in trainable),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "cpu_model": cpu_model(),
        "loadavg_start": load_start,
        "loadavg_end": load_average(),
        "env": {k: os.environ.get(k, "") for k in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                     "LD_LIBRARY_PATH", "OMP_WAIT_POLICY")},
    }
    out.update(openblas_info())
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
