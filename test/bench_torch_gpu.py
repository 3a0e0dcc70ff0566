#!/usr/bin/env python3
"""bench_torch_gpu.py - PyTorch's own images/s on a CUDA device, printed
beside test/gpu_check.sh's medtl figures for scale (information only; run
by test/gpu_check.sh on a lent GPU machine, whose python3 has torch).

torchvision resnet18, resnet50 and mobilenet_v2 (random weights), 224x224,
batch 64, channels_last, cudnn.benchmark on:
  inference  eval(), no_grad, logits copied to the host
  training   train(), AdamW, cross-entropy; zero_grad + forward + backward
             + step
each in float32 with TF32 off (medtl's float32 path does not use TF32) and
under torch.autocast(bfloat16) (float32 master weights, as medtl's bf16).
A figure is the best of timed iterations (torch.cuda.synchronize after
each) after three warm-ups.

  python3 test/bench_torch_gpu.py [--archs a,b] [--batch N] [--seconds T]
"""
import argparse
import contextlib
import time

import torch
import torchvision


def timed(fn, seconds):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    start = time.perf_counter()
    it = 0
    while it < 20 and (it < 3 or time.perf_counter() - start < seconds):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
        it += 1
    return best


def bench(arch, batch, seconds, bf16):
    dev = torch.device("cuda")
    model = getattr(torchvision.models, arch)(num_classes=1000).to(dev).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224, device=dev).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=dev)
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    model.eval()

    def infer():
        with torch.no_grad(), ctx():
            model(x).float().cpu()
    t_inf = timed(infer, seconds)

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        with ctx():
            loss = loss_fn(model(x).float(), y)
        loss.backward()
        opt.step()
    t_train = timed(step, seconds)
    del model, opt
    torch.cuda.empty_cache()
    return batch / t_inf, batch / t_train


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default="resnet18,resnet50,mobilenet_v2")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=1.5)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_torch_gpu: no CUDA device for torch")
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    print("torch %s, cuda %s, cudnn %s, %s" % (torch.__version__, torch.version.cuda,
                                               torch.backends.cudnn.version(), torch.cuda.get_device_name(0)))
    print("%-16s %16s %16s %16s %16s" % ("PyTorch (img/s)", "inference fp32", "inference bf16",
                                         "training fp32", "training bf16"))
    for arch in a.archs.split(","):
        i32, t32 = bench(arch, a.batch, a.seconds, False)
        i16, t16 = bench(arch, a.batch, a.seconds, True)
        print("%-16s %16.1f %16.1f %16.1f %16.1f" % (arch, i32, i16, t32, t16), flush=True)
    print("(224x224, batch %d, channels_last, cudnn.benchmark, TF32 off; bf16: torch.autocast; "
          "best of timed iterations)" % a.batch)


if __name__ == "__main__":
    main()
