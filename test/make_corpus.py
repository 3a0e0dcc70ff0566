#!/usr/bin/env python3
"""Write a deterministic corpus of hostile inputs for the fuzz-target replays.

Usage: make_corpus.py OUTDIR SHARED

Mutates the shared sample images and the head of the shared safetensors
file: truncations, bit flips, overwritten sizes, random bytes.  Uses only the
standard library, so it runs on any python3.
"""
import os
import random
import struct
import sys
import zlib


def png_header(w, h, depth=8, color=2):
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr
            + struct.pack(">I", zlib.crc32(ihdr)))


def main():
    out, shared = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    rng = random.Random(20261126)
    samples = os.path.join(shared, "models", "mobilenet_v2_imagenet", "samples")
    seeds = []
    for name in ("bird_224.png", "cat.png"):
        with open(os.path.join(samples, name), "rb") as f:
            seeds.append(f.read())
    chest = os.path.join(shared, "data", "chest_xray")
    with open(os.path.join(chest, "manifest.csv")) as f:
        first = f.read().splitlines()[1].split(",")[0]
    with open(os.path.join(chest, first), "rb") as f:
        seeds.append(f.read())
    with open(os.path.join(shared, "models", "mobilenet_v2_imagenet",
                           "mobilenet_v2_imagenet.safetensors"), "rb") as f:
        st = f.read(65536)
    seeds.append(st)

    cases = []
    for s in seeds:
        for _ in range(12):                      # truncations
            cases.append(s[:rng.randrange(0, len(s))])
        for _ in range(12):                      # bit flips
            b = bytearray(s)
            for _ in range(rng.randrange(1, 16)):
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
            cases.append(bytes(b))
        for _ in range(6):                       # overwritten 4-byte runs
            b = bytearray(s)
            i = rng.randrange(max(1, len(b) - 4))
            b[i:i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00",
                                     b"\x7f\xff\xff\xff", b"\xea\x60\xea\x60"])
            cases.append(bytes(b))
    for w, h in ((100000, 100000), (0, 10), (10, 0), (1, 1), (65536, 65536)):
        cases.append(png_header(w, h) + b"\x00\x00\x00\x00IEND\xaeB`\x82")
    for n in (0, 1, 7, 8, 64, 4096):
        cases.append(bytes(rng.randrange(256) for _ in range(n)))
    cases.append(b"\xff\xd8\xff" + bytes(rng.randrange(256) for _ in range(500)))
    cases.append(struct.pack("<Q", 2**63) + b"{}")
    cases.append(struct.pack("<Q", 2) + b"{}")
    cases.append(struct.pack("<Q", 4) + b"[[[[" * 5000)
    for i, c in enumerate(cases):
        with open(os.path.join(out, "case_%04d" % i), "wb") as f:
            f.write(c)
    print("wrote %d inputs to %s" % (len(cases), out))


if __name__ == "__main__":
    main()
