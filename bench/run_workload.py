#!/usr/bin/python3
"""loragrad against PyTorch on the reference workload, in one run: the driver
`make bench` calls.

For each workload (S, M), method and thread count it runs, in turn and for
several rounds, `loragrad bench --json` in fp32 and in bf16 (`--precision
bf16`: the frozen base in bf16; lora and dora only) and
bench/torch_workload.py three ways: PyTorch as installed ("default": Debian's pthreads OpenBLAS, whatever
OPENBLAS_CORETYPE the environment holds), PyTorch tuned as the spec says
(the OpenMP OpenBLAS via LD_LIBRARY_PATH, OPENBLAS_CORETYPE=SkylakeX where
the CPU has AVX-512, OMP_NUM_THREADS, and OMP_WAIT_POLICY=passive), and
tuned with torch.autocast("cpu", torch.bfloat16). PyTorch as installed runs
in the first round only (--default-rounds): it is the slow one. Alternating the programs within each
round spreads a change in the machine's load over all of them; each number
in the table is the median over the rounds of the runs' own medians.

GFLOP/s and % of peak of every column use loragrad's FLOP count for the
workload (the spec's formula) and the FMA peak `loragrad bench` measured at
its start, in the same round. Ratios are PyTorch's ms / loragrad's ms
(fp32's, and in the last column bf16 autocast's over loragrad bf16's):
above 1, loragrad is faster.

    /usr/bin/python3 bench/run_workload.py --loragrad build/cli/loragrad [--quick]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_SCRIPT = os.path.join(HERE, "torch_workload.py")
OPENBLAS_OPENMP = "/usr/lib/x86_64-linux-gnu/openblas-openmp"


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def tuned_coretype():
    """OpenBLAS's best kernels for this CPU: SkylakeX needs AVX-512 (forced on
    a CPU without it, OpenBLAS dies of SIGILL); Haswell is its AVX2 set."""
    flags = cpu_flags()
    if "avx512f" in flags:
        return "SkylakeX"
    if "avx2" in flags:
        return "Haswell"
    return None


def run_json(cmd, env, timeout):
    """Runs a benchmark; its JSON, or None (and why on stderr)."""
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  timed out after {timeout} s: {' '.join(cmd)}", file=sys.stderr)
        return None
    if p.returncode != 0:
        print(f"  exit {p.returncode}: {' '.join(cmd)}\n    {p.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    return json.loads(p.stdout)


def dims_flags(w):
    return ["--d-model", str(w["d_model"]), "--layers", str(w["n_layer"]), "--heads", str(w["n_head"]),
            "--seq", str(w["seq"]), "--batch", str(w["batch"]), "--r", str(w["r"]), "--alpha", str(w["alpha"]),
            "--targets", ",".join(w["targets"])]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loragrad", required=True, help="the loragrad program (build/cli/loragrad)")
    ap.add_argument("--workloads", default="S,M")
    ap.add_argument("--methods", default="lora", help="comma-separated: lora, dora, full (qlora: loragrad only)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 round of 5 steps after 1 warm-up (not the spec's protocol)")
    ap.add_argument("--default-rounds", type=int, default=1,
                    help="rounds that also run PyTorch as installed (0: none); it can be 5x slower than tuned "
                    "(OpenBLAS's oldest kernels where it does not know the CPU), so by default only the first")
    ap.add_argument("--precisions", default="fp32,bf16",
                    help="loragrad's: fp32, bf16 (the frozen base in bf16; lora and dora only)")
    ap.add_argument("--python", default="/usr/bin/python3",
                    help="the Python whose torch runs bench/torch_workload.py (default Debian's, python3-torch)")
    ap.add_argument("--out", help="also write every run's JSON here")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per run")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.steps, args.warmup = 1, 5, 1
    workloads = args.workloads.split(",")
    methods = args.methods.split(",")
    threads = [int(t) for t in args.threads.split(",")]

    coretype = tuned_coretype()
    have_openmp_blas = os.path.isdir(OPENBLAS_OPENMP)

    def torch_env(tuned, nthreads):
        env = dict(os.environ)
        if tuned:
            if have_openmp_blas:
                env["LD_LIBRARY_PATH"] = OPENBLAS_OPENMP + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
            if coretype:
                env["OPENBLAS_CORETYPE"] = coretype
            env["OMP_NUM_THREADS"] = str(nthreads)  # the OpenMP OpenBLAS obeys this, not OPENBLAS_NUM_THREADS
            # libgomp's default spin (milliseconds) takes the core a busy
            # machine's other work needs (PyTorch's 2-thread step measured
            # 2.7x slower with it on a loaded machine); loragrad's own pool
            # spins briefly, then sleeps (thread_pool.cpp). Tuned PyTorch
            # runs passive unless the user set OMP_WAIT_POLICY.
            env.setdefault("OMP_WAIT_POLICY", "passive")
        return env

    # (key, column title, extra torch flags, tuned)
    torch_variants = [("default", "PyTorch default", [], False)] if args.default_rounds > 0 else []
    torch_variants += [("tuned", "PyTorch tuned", [], True),
                       ("tuned_bf16", "PyTorch tuned bf16 autocast", ["--autocast-bf16"], True)]

    protocol = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    results = {}  # (workload, method, threads) -> {variant: [json per round]}
    started = time.time()
    for wl in workloads:
        for method in methods:
            for nt in threads:
                key = (wl, method, nt)
                runs = results.setdefault(key, {})
                for rnd in range(args.rounds):
                    tag = f"[{wl} {method} {nt} thr, round {rnd + 1}/{args.rounds}]"
                    lg = run_json([args.loragrad, "bench", "--json", "--workload", wl, "--method", method,
                                   "--threads", str(nt)] + protocol, dict(os.environ), args.timeout)
                    if lg is None:
                        continue
                    runs.setdefault("loragrad", []).append(lg)
                    print(f"{tag} loragrad {lg['ms_per_step']:.1f} ms ({lg['pct_of_peak']:.0f}% of "
                          f"{lg['fma_peak_gflops']:.0f} GFLOP/s), load {lg['loadavg_start'][0]:.2f}",
                          file=sys.stderr, flush=True)
                    if "bf16" in args.precisions.split(",") and method in ("lora", "dora"):
                        lb = run_json([args.loragrad, "bench", "--json", "--workload", wl, "--method", method,
                                       "--threads", str(nt), "--precision", "bf16"] + protocol,
                                      dict(os.environ), args.timeout)
                        if lb is not None:
                            runs.setdefault("loragrad_bf16", []).append(lb)
                            print(f"{tag} loragrad bf16 {lb['ms_per_step']:.1f} ms (base kernel "
                                  f"{lb.get('bf16_kernel', '?')})", file=sys.stderr, flush=True)
                    if method == "qlora":
                        continue  # no PyTorch counterpart (torch_workload.py says why)
                    for name, _, extra, tuned in torch_variants:
                        if name == "default" and rnd >= args.default_rounds:
                            continue
                        cmd = [args.python, TORCH_SCRIPT, "--method", method, "--threads", str(nt)]
                        cmd += dims_flags(lg["workload"]) + protocol + extra
                        pt = run_json(cmd, torch_env(tuned, nt), args.timeout)
                        if pt is None:
                            continue
                        pt["round_fma_peak_gflops"] = lg["fma_peak_gflops"]
                        pt["gflop_per_step"] = lg["gflop_per_step"]
                        runs.setdefault(name, []).append(pt)
                        print(f"{tag} PyTorch {name} {pt['ms_per_step']:.1f} ms (OpenBLAS {pt['openblas_core']})",
                              file=sys.stderr, flush=True)
    elapsed = time.time() - started

    if args.out:
        with open(args.out, "w") as f:
            json.dump({f"{w} {m} {t}": v for (w, m, t), v in results.items()}, f, indent=1)

    print_report(results, torch_variants, args, coretype, have_openmp_blas, elapsed)


def med(runs, field):
    return statistics.median(r[field] for r in runs)


def print_report(results, torch_variants, args, coretype, have_openmp_blas, elapsed):
    all_runs = [r for per in results.values() for runs in per.values() for r in runs]
    if not all_runs:
        print("no run succeeded")
        sys.exit(1)
    lg_runs = [r for per in results.values() for r in per.get("loragrad", []) + per.get("loragrad_bf16", [])]
    loads = [r["loadavg_start"][0] for r in all_runs] + [r["loadavg_end"][0] for r in all_runs]
    peaks = {}
    for r in lg_runs:
        peaks.setdefault(r["threads"], []).append(r["fma_peak_gflops"])
    cores = {r.get("openblas_core") for r in all_runs if r["program"] == "pytorch"}
    pt = next((r for r in all_runs if r["program"] == "pytorch"), None)

    print()
    print(f"CPU: {all_runs[0]['cpu_model']}; loragrad kernels {lg_runs[0]['kernels_isa'] if lg_runs else '?'}; "
          f"PyTorch {pt['version'] if pt else '-'}")
    print("FMA peak (loragrad bench, median over its runs): " +
          ", ".join(f"{t} thread{'s' if t > 1 else ''} {statistics.median(v):.0f} GFLOP/s"
                    for t, v in sorted(peaks.items())))
    # loragrad's wait_strategy names its pool ("loragrad pool, 2 threads: ..."); PyTorch's
    # OMP_WAIT_POLICY is per variant (default and tuned may differ).
    waits = sorted({r.get('wait_strategy') or
                    f"{r['program']} OMP_WAIT_POLICY=" + (r.get('env', {}).get('OMP_WAIT_POLICY') or '(unset)')
                    for r in all_runs})
    print(f"load average (1 min) during the run: {min(loads):.2f} to {max(loads):.2f} on {os.cpu_count()} CPUs; "
          f"waiting threads: {'; '.join(waits)}")
    print(f"PyTorch default: OpenBLAS as installed, OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; "
          f"tuned: {'OpenMP OpenBLAS (' + OPENBLAS_OPENMP + ')' if have_openmp_blas else 'OpenMP OpenBLAS missing'}, "
          f"OPENBLAS_CORETYPE={coretype or '(unset)'}, OMP_NUM_THREADS=threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'passive')}. OpenBLAS cores seen: "
          f"{', '.join(sorted(c or '?' for c in cores))}")
    print(f"protocol: {args.rounds} round(s) (PyTorch default: {min(args.default_rounds, args.rounds)}); each run "
          f"{args.warmup} warm-up + {args.steps} timed steps, its median; "
          f"cells: median over rounds; % of the FMA peak by the spec's FLOP formula; ratio = PyTorch ms / "
          f"loragrad ms (> 1: loragrad faster); {elapsed / 60:.1f} min in all")
    print()

    lg_cols = [("loragrad", "loragrad fp32")]
    if any("loragrad_bf16" in per for per in results.values()):
        lg_cols.append(("loragrad_bf16", "loragrad bf16"))
    cols = lg_cols + [(k, title) for k, title, _, _ in torch_variants]
    pt_cols = cols[len(lg_cols):]
    bf16_ratio = len(lg_cols) > 1 and any(k == "tuned_bf16" for k, _ in pt_cols)
    head = ["workload", "thr"] + [t for _, t in cols] + [f"vs {t[len('PyTorch '):]}" for k, t in pt_cols]
    if bf16_ratio:
        head.append("bf16 vs tuned bf16 autocast")
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for (wl, method, nt), per in results.items():
        lg = per.get("loragrad")
        row = [f"{wl} {method}", str(nt)]
        lg_ms = med(lg, "ms_per_step") if lg else None
        for key, _ in cols:
            runs = per.get(key)
            if not runs:
                row.append("-")
                continue
            ms = med(runs, "ms_per_step")
            peak = med(runs, "fma_peak_gflops" if key.startswith("loragrad") else "round_fma_peak_gflops")
            gflop = runs[0]["gflop_per_step"]
            row.append(f"{ms:.0f} ms ({100 * gflop / (ms * 1e-3) / peak:.0f}%)")
        for key, _ in pt_cols:
            runs = per.get(key)
            row.append(f"{med(runs, 'ms_per_step') / lg_ms:.2f}x" if runs and lg_ms else "-")
        if bf16_ratio:
            lb, tb = per.get("loragrad_bf16"), per.get("tuned_bf16")
            row.append(f"{med(tb, 'ms_per_step') / med(lb, 'ms_per_step'):.2f}x" if lb and tb else "-")
        print("| " + " | ".join(row) + " |")

    print()
    head = ["workload", "thr"] + [t for _, t in cols]
    print("peak RSS (MiB), medians over rounds; loragrad's peak tensor bytes in brackets")
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for (wl, method, nt), per in results.items():
        row = [f"{wl} {method}", str(nt)]
        for key, _ in cols:
            runs = per.get(key)
            if not runs:
                row.append("-")
                continue
            cell = f"{med(runs, 'peak_rss_bytes') / 2**20:.0f}"
            if key.startswith("loragrad"):
                cell += f" [{med(runs, 'peak_tensor_bytes') / 2**20:.0f}]"
            row.append(cell)
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
