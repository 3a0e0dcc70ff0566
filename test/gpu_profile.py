#!/usr/bin/env python3
"""gpu_profile.py - where a training step's device time goes, kernel by
kernel: runs test/bin/cuda_train_check.so's main() (build it with `make -f
src/cuda/cuda.mk test/bin/cuda_train_check.so`) under torch.profiler, which
records every CUDA kernel of the process (medtl's and cuBLAS's), and prints
the kernels by total device time.  Information only, for a lent GPU machine
whose python3 has torch.

  python3 test/gpu_profile.py [ARCH [BATCH]]     (default resnet50 64; 224x224)

The steps profiled are cuda_train_check's benchmark (AdamW, every layer
training): a warm-up and the timed steps in float32, then in bf16.
"""
import ctypes
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    arch = sys.argv[1] if len(sys.argv) > 1 else "resnet50"
    batch = sys.argv[2] if len(sys.argv) > 2 else "64"
    lib = ctypes.CDLL(os.path.join(HERE, "bin", "cuda_train_check.so"))
    args = [b"cuda_train_check", b"--archs", arch.encode(), b"--settings", b"x", b"--bench-batch",
            batch.encode(), b"--cpu-batch", b"2", b"--seconds", b"0.3"]
    argv = (ctypes.c_char_p * (len(args) + 1))(*args, None)
    if not torch.cuda.is_available():
        print("gpu_profile: torch sees no CUDA device")
        sys.exit(1)
    torch.cuda.init()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        rc = lib.main(len(args), argv)
    ctypes.CDLL(None).fflush(None)
    print("cuda_train_check returned %d" % rc)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=70))


if __name__ == "__main__":
    main()
