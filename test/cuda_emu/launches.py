#!/usr/bin/env python3
"""launches.py IN.cu OUT.cpp - rewrite kernel<<<grid, block>>>(args); launches
as emu_launch(...) calls for the CPU emulation (test/cuda_emu/emu.cpp).
Kernels in SYNC use __syncthreads or warp shuffles and get real threads."""
import re, sys
s = open(sys.argv[1]).read()
SYNC = {"k_colsum", "k_depthwise_bwd_weight", "k_softmax", "k_layer_norm",
        "k_layer_norm_bwd_rows", "k_ln_colsum", "k_softmax_bwd_rows", "k_aug_gray", "k_seg_partial"}
def split_top(cfg):
    depth = 0
    for i, ch in enumerate(cfg):
        if ch in "([": depth += 1
        elif ch in ")]": depth -= 1
        elif ch == "," and depth == 0: return cfg[:i], cfg[i+1:]
    raise SystemExit("bad cfg " + cfg)
def rep(m):
    name, cfg, args = m.group(1), m.group(2), m.group(3)
    g, b = split_top(cfg)
    base = name.split("<")[0]
    return 'emu_launch("%s", dim3(%s), dim3(%s), %d, [=]() { %s(%s); });' % (base, g.strip(), b.strip(), base in SYNC, name, args)
s2, n = re.subn(r'(\w+(?:<[\w ,]+>)?)<<<(.*?)>>>\((.*?)\);', rep, s, flags=re.S)
sys.stderr.write("launches converted: %d\n" % n)
open(sys.argv[2], "w").write(s2)
