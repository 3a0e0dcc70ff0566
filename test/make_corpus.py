#!/usr/bin/env python3
"""Write a deterministic corpus of hostile inputs for the fuzz-target replays.

Usage: make_corpus.py OUTDIR SHARED

Mutates the shared sample images and a Kvasir-SEG mask, the head of the shared safetensors file
and small torch.save-style .pth archives built here: truncations, bit flips,
overwritten sizes, random bytes, forbidden globals, malformed pickles.  Uses
only the standard library, so it runs on any python3.
"""
import io
import os
import random
import struct
import sys
import zipfile
import zlib


# --- .pth archives as torch.save writes them (zip of stored entries) -------

def p_str(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def p_int(v):
    return b"J" + struct.pack("<i", v)


def p_global(mod, name):
    return b"c" + mod.encode() + b"\n" + name.encode() + b"\n"


def p_tensor(stype, key, numel, offset, shape, stride):
    return (p_global("torch._utils", "_rebuild_tensor_v2") + b"((" + p_str("storage")
            + p_global("torch", stype) + p_str(key) + p_str("cpu") + p_int(numel)
            + b"tQ" + p_int(offset) + b"(" + b"".join(p_int(s) for s in shape) + b"t("
            + b"".join(p_int(s) for s in stride) + b"t\x89"
            + p_global("collections", "OrderedDict") + b")Rq\x05tR")


def p_state_dict(items, wrap=None):
    body = b"".join(p_str(k) + v for k, v in items)
    sd = p_global("collections", "OrderedDict") + b")Rq\x00(" + body + b"u"
    if wrap:
        sd = b"}(" + p_str("epoch") + p_int(3) + p_str(wrap) + sd + b"u"
    return b"\x80\x02" + sd + b"."


def pth_zip(pkl, storages, prefix="archive", byteorder=True):
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
        z.writestr(prefix + "/data.pkl", pkl)
        if byteorder:
            z.writestr(prefix + "/byteorder", "little")
        for key, data in storages:
            z.writestr(prefix + "/data/" + key, data)
        z.writestr(prefix + "/version", "3\n")
    return f.getvalue()


def pth_seeds(rng):
    f32 = struct.pack("<12f", *range(12))
    f16 = struct.pack("<4e", 1.0, -2.0, 0.5, 65504.0)
    i64 = struct.pack("<q", 7)
    good = p_state_dict([
        ("w", p_tensor("FloatStorage", "0", 12, 0, [3, 4], [4, 1])),
        ("wt", p_tensor("FloatStorage", "0", 12, 0, [4, 3], [1, 4])),
        ("row", p_tensor("FloatStorage", "0", 12, 8, [4], [1])),
        ("h", p_tensor("HalfStorage", "1", 4, 0, [2, 2], [2, 1])),
        ("bn.num_batches_tracked", p_tensor("LongStorage", "2", 1, 0, [], [])),
    ])
    storages = [("0", f32), ("1", f16), ("2", i64)]
    # raw pickles too: fuzz_pth also wraps each input as data.pkl of a valid archive
    raw = [good, p_state_dict([("module.a", p_tensor("FloatStorage", "0", 12, 2, [5], [2]))],
                              wrap="state_dict"),
           p_state_dict([("x", p_tensor("DoubleStorage", "2", 1, 0, [1], [1]))]),
           b"\x80\x02" + p_global("os", "system") + p_str("id") + b"\x85R."]
    seeds = raw + [pth_zip(good, storages),
             pth_zip(p_state_dict([("module.a", p_tensor("FloatStorage", "0", 12, 2, [5], [2]))],
                                  wrap="state_dict"), storages[:1]),
             pth_zip(good, storages, prefix="resnet18", byteorder=False)]
    hostile = []
    for mod, name in (("os", "system"), ("posix", "system"), ("builtins", "eval"),
                      ("builtins", "exec"), ("subprocess", "Popen"), ("nt", "system")):
        hostile.append(pth_zip(b"\x80\x02" + p_global(mod, name) + p_str("id") + b"\x85R.", []))
        hostile.append(pth_zip(b"\x80\x04" + p_str(mod) + p_str(name) + b"\x93" + p_str("id")
                               + b"\x85R.", []))
    hostile.append(pth_zip(b"(" * 100000 + b".", []))                      # deep marks
    hostile.append(pth_zip(b"N" * 300000 + b".", []))                      # a deep stack
    hostile.append(pth_zip(b"]" + b"(" + b"h\x00" * 1000 + b"e.", []))      # memo of nothing
    hostile.append(pth_zip(b"]q\x00(" + b"h\x00" * 10000 + b"e.", []))      # self-referencing list
    hostile.append(pth_zip(p_state_dict([("x", p_tensor("FloatStorage", "0", 12, 0,
                                                        [2**31 - 1, 2**31 - 1], [0, 0]))]),
                           storages[:1]))
    hostile.append(pth_zip(p_state_dict([("x", p_tensor("FloatStorage", "0", 2**31 - 1, 0,
                                                        [4], [1]))]), storages[:1]))
    hostile.append(pth_zip(p_state_dict([("x", p_tensor("FloatStorage", "0", 12, 11,
                                                        [2], [1]))]), storages[:1]))
    hostile.append(pth_zip(bytes(rng.randrange(256) for _ in range(300)), storages))
    return seeds, hostile


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
    kvasir = os.path.join(shared, "data", "kvasir_seg")     # a real 0/255 mask
    with open(os.path.join(kvasir, "manifest.csv")) as f:
        first = f.read().splitlines()[1].split(",")[1]
    with open(os.path.join(kvasir, first), "rb") as f:
        seeds.append(f.read())
    with open(os.path.join(shared, "models", "mobilenet_v2_imagenet",
                           "mobilenet_v2_imagenet.safetensors"), "rb") as f:
        st = f.read(65536)
    seeds.append(st)
    pth, hostile_pth = pth_seeds(rng)
    seeds.extend(pth)

    cases = list(pth) + hostile_pth
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
