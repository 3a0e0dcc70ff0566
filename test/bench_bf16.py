#!/usr/bin/python3
"""Benchmark (not a test): bf16 (medtl.precision = bf16) against fp32.

Run with Debian's /usr/bin/python3 after `make tools`.  For each
architecture, in the same invocation and on the same threads, alternating
the variants over --runs rounds (best of the rounds):

  medtl engine  test/bin/bench_engine ARCH BATCH THREADS SECONDS (scoring)
                and test/bin/train_step bench ARCH 224 224 16 THREADS
                (a training step), with MEDTL_PRECISION=fp32 and =bf16
  PyTorch       torchvision's model, channels_last, eager, eval + no_grad
                for scoring (mean over --seconds, as bench_engine's figure)
                and model.train() + SGD for a training step (best of 3, as
                against train_step's best step), without and with
                torch.autocast("cpu", dtype=bfloat16)

Prints images/s, bf16/fp32 for each, and medtl bf16 / PyTorch bf16.
PyTorch 1.13 cannot train MobileNetV2 under bf16 autocast (no bf16
backward for ReLU6's hardtanh): that cell says so.
"""
import argparse
import os
import re
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ENGINE = os.path.join(HERE, "bin", "bench_engine")
STEP = os.path.join(HERE, "bin", "train_step")


def engine(arch, batch, threads, seconds, prec):
    env = dict(os.environ, MEDTL_PRECISION=prec)
    out = subprocess.run([ENGINE, arch, str(batch), str(threads), str(seconds)], env=env,
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"([0-9.]+) images/s \(mean\)", out)
    if not m:
        raise RuntimeError("unexpected bench_engine output: %r" % out)
    return float(m.group(1))


def step(arch, threads, prec):
    env = dict(os.environ, MEDTL_PRECISION=prec, MT_BENCH_STEPS="4")
    out = subprocess.run([STEP, "bench", arch, "224", "224", "16", str(threads)], env=env,
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"\(([0-9.]+) img/s best\)", out)
    if not m:
        raise RuntimeError("unexpected train_step output: %r" % out)
    return float(m.group(1))


def torch_rates(arch, threads, batch, bf16, seconds):
    import torch
    import torchvision
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=1000).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(x)
        n, t0 = 0, time.perf_counter()
        while n < 3 or time.perf_counter() - t0 < seconds:
            model(x)
            n += 1
        score = batch * n / (time.perf_counter() - t0)   # mean, as bench_engine's figure
    xt = torch.randn(16, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (16,))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    lf = torch.nn.CrossEntropyLoss()
    best = 1e9
    try:
        for i in range(4):
            t0 = time.perf_counter()
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = lf(model(xt), y)
            loss.backward()
            opt.step()
            if i:
                best = min(best, time.perf_counter() - t0)
        train = 16 / best
    except RuntimeError as e:
        train = "fails (%s)" % str(e).splitlines()[0][:60]
    return score, train


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default="resnet18,resnet50,mobilenet_v2")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=2)
    args = ap.parse_args()
    for arch in [a for a in args.archs.split(",") if a]:
        best = {}
        for _ in range(args.runs):
            for prec in ("fp32", "bf16"):
                k = ("medtl", prec)
                s = engine(arch, args.batch, args.threads, args.seconds, prec)
                t = step(arch, args.threads, prec)
                o = best.get(k, (0, 0))
                best[k] = (max(o[0], s), max(o[1], t))
                k = ("torch", prec)
                s, t = torch_rates(arch, args.threads, args.batch, prec == "bf16", args.seconds)
                o = best.get(k, (0, 0))
                best[k] = (max(o[0], s), t if isinstance(t, str) else max(o[1] if not isinstance(o[1], str) else 0, t))
        print("== %s, %d threads, best of %d" % (arch, args.threads, args.runs))
        for what, idx, label in (("scoring", 0, "batch %d" % args.batch), ("training", 1, "step, batch 16")):
            m32, m16 = best[("medtl", "fp32")][idx], best[("medtl", "bf16")][idx]
            p32, p16 = best[("torch", "fp32")][idx], best[("torch", "bf16")][idx]
            line = "  %-8s %-15s medtl fp32 %6.1f bf16 %6.1f img/s (bf16/fp32 %.2f)" % (
                what, label, m32, m16, m16 / m32)
            if isinstance(p16, str) or isinstance(p32, str):
                line += " | PyTorch fp32 %s bf16 %s" % (p32 if isinstance(p32, str) else "%.1f" % p32,
                                                         p16 if isinstance(p16, str) else "%.1f" % p16)
            else:
                line += " | PyTorch fp32 %6.1f bf16 %6.1f (medtl bf16 / PyTorch bf16 %.2f)" % (p32, p16, m16 / p16)
            print(line, flush=True)


if __name__ == "__main__":
    main()
