#!/usr/bin/python3
"""Independent safetensors cases for test/unit/test_safetensors.c.

Writes files with Python's own json/struct (and numpy/torch for the tensor
bytes) plus a manifest of what a correct reader must find, so the C reader
is checked against an implementation that shares no code with it.  With
--check it instead reads the file that the C writer produced and checks it.

Usage (run with Debian's /usr/bin/python3, which has numpy and torch):
    gen_safetensors_cases.py OUTDIR [SHARED_DIR]
    gen_safetensors_cases.py --check OUTDIR/c_written.safetensors

Manifest lines (tab separated, strings hex-encoded UTF-8):
    file    NAME  ok|bad  N_TENSORS  N_META
    tensor  NAME  HEXNAME  DTYPE  DIMS(comma separated or -)  OFFSET  NBYTES  CRC32|-
    meta    NAME  HEXKEY  HEXVALUE
NAME is relative to OUTDIR unless absolute.
"""
import json
import os
import struct
import sys
import zlib

import numpy as np

DTYPE_SIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4,
              "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def hexs(s):
    return s.encode("utf-8").hex()


def build(entries, meta=None, ensure_ascii=True, order=None, pad=8):
    """entries: list of (name, dtype, shape, bytes) in data order."""
    header = {}
    if meta is not None:
        header["__metadata__"] = meta
    off = 0
    spans = []
    for name, dtype, shape, data in entries:
        spans.append((name, dtype, list(shape), off, off + len(data)))
        off += len(data)
    idx = order if order is not None else range(len(spans))
    for i in idx:
        name, dtype, shape, b, e = spans[i]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [b, e]}
    text = json.dumps(header, ensure_ascii=ensure_ascii).encode("utf-8")
    text += b" " * ((-len(text)) % pad)
    blob = struct.pack("<Q", len(text)) + text + b"".join(e[3] for e in entries)
    return blob, spans


def describe(path, blob, spans, meta, lines):
    n = struct.unpack("<Q", blob[:8])[0]
    lines.append("file\t%s\tok\t%d\t%d" % (path, len(spans), len(meta or {})))
    for name, dtype, shape, b, e in sorted(spans, key=lambda s: (s[3], s[4], s[0].encode())):
        data = blob[8 + n + b:8 + n + e]
        lines.append("tensor\t%s\t%s\t%s\t%s\t%d\t%d\t%d" % (
            path, hexs(name), dtype, ",".join(map(str, shape)) or "-",
            8 + n + b, e - b, zlib.crc32(data)))
    for k, v in (meta or {}).items():
        lines.append("meta\t%s\t%s\t%s" % (path, hexs(k), hexs(v)))


def generate(outdir, shared):
    rng = np.random.default_rng(7)
    lines = []

    def tb(a):
        return np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()

    entries = [
        ("w.f32", "F32", (2, 3), tb(rng.standard_normal((2, 3)).astype(np.float32))),
        ("w.f64", "F64", (3,), tb(rng.standard_normal(3))),
        ("w.f16", "F16", (5,), tb(rng.standard_normal(5).astype(np.float16))),
        ("steps", "I64", (), tb(np.array(12345, dtype=np.int64))),
        ("i32", "I32", (2, 2), tb(np.arange(4, dtype=np.int32) - 2)),
        ("i16", "I16", (1,), tb(np.array([-7], dtype=np.int16))),
        ("i8", "I8", (3,), tb(np.array([-1, 0, 1], dtype=np.int8))),
        ("u8", "U8", (2, 1, 2), tb(np.arange(4, dtype=np.uint8))),
        ("mask", "BOOL", (3,), tb(np.array([True, False, True]))),
        ("empty", "F32", (0, 4), b""),
        ("quote\"back\\slash/tab\tnl\n", "U8", (1,), b"\x05"),
        ("caf\u00e9.\u2603.\U0001F600", "U8", (2,), b"\x01\x02"),
    ]
    try:
        import torch
        bf = torch.tensor([1.5, -2.0, 3.25], dtype=torch.bfloat16)
        entries.append(("w.bf16", "BF16", (3,), bf.view(torch.int16).numpy().astype("<i2").tobytes()))
    except ImportError:
        pass
    meta = {"arch": "demo", "mean": "[0.485, 0.456, 0.406]",
            "esc\u00e9\"\\": "line\nbreak \U0001F600"}
    order = list(reversed(range(len(entries))))
    for fname, ascii_ in (("py_ascii.safetensors", True), ("py_utf8.safetensors", False)):
        blob, spans = build(entries, meta, ensure_ascii=ascii_, order=order)
        with open(os.path.join(outdir, fname), "wb") as f:
            f.write(blob)
        describe(fname, blob, spans, meta, lines)

    blob, spans = build([], None)
    with open(os.path.join(outdir, "py_empty.safetensors"), "wb") as f:
        f.write(blob)
    describe("py_empty.safetensors", blob, spans, None, lines)

    # files a strict reader must refuse
    good, _ = build(entries[:2], {"a": "b"})
    bad = {
        "bad_trailing.safetensors": good + b"\0",
        "bad_short.safetensors": good[:-1],
        "bad_float_shape.safetensors": build([("x", "F32", (1.0,), b"\0" * 4)])[0],
        "bad_meta_int.safetensors": build([("x", "U8", (1,), b"\0")], {"n": 3})[0],
        "bad_nan.safetensors": (lambda t: struct.pack("<Q", len(t)) + t)(
            json.dumps({"x": {"dtype": "U8", "shape": [float("nan")],
                              "data_offsets": [0, 0]}}).encode()),
        "bad_dup.safetensors": (lambda t: struct.pack("<Q", len(t)) + t + b"\0")(
            b'{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
            b'"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'),
    }
    for fname, blob in bad.items():
        with open(os.path.join(outdir, fname), "wb") as f:
            f.write(blob)
        lines.append("file\t%s\tbad\t0\t0" % fname)

    if shared:
        real = os.path.join(shared, "models", "mobilenet_v2_imagenet",
                            "mobilenet_v2_imagenet.safetensors")
        with open(real, "rb") as f:
            blob = f.read()
        n = struct.unpack("<Q", blob[:8])[0]
        header = json.loads(blob[8:8 + n])
        meta = header.pop("__metadata__", {})
        spans = [(k, v["dtype"], v["shape"], v["data_offsets"][0], v["data_offsets"][1])
                 for k, v in header.items()]
        describe(real, blob, spans, meta, lines)

    with open(os.path.join(outdir, "manifest.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def check(path):
    """Read the file the C writer made (see test_safetensors.c) and check it."""
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    assert n % 8 == 0, "header length not a multiple of 8"
    text = blob[8:8 + n]
    header = json.loads(text.decode("utf-8"))
    assert text.startswith(b"{") and text.rstrip(b" ").endswith(b"}")
    meta = header.pop("__metadata__")
    assert meta == {"arch": "roundtrip", "q\"uote\\key": "line\nbreak\ttab \u00e9\U0001F600",
                    "ctl": "\x01\x1f"}, meta
    data = blob[8 + n:]

    def get(name, npdtype):
        e = header[name]
        b, en = e["data_offsets"]
        return e, np.frombuffer(data[b:en], dtype=npdtype).reshape(e["shape"])

    e, a = get("conv.weight", "<f4")
    assert e["dtype"] == "F32" and e["shape"] == [2, 3, 1, 1]
    assert np.array_equal(a.ravel(), np.arange(6, dtype=np.float32) * 0.5 - 1)
    e, a = get("bn.num_batches_tracked", "<i8")
    assert e["dtype"] == "I64" and e["shape"] == [] and int(a) == 42
    e, a = get("odd \"name\"\\\n\u2603", "u1")
    assert e["dtype"] == "U8" and list(a) == [7, 8, 9]
    e, a = get("empty", "<f4")
    assert e["shape"] == [0] and a.size == 0
    e, a = get("half", "<f2")
    assert list(a) == [1.0, -2.0]
    # tensors laid out in the order they were given, covering the data
    order = sorted(header, key=lambda k: header[k]["data_offsets"][0])
    pos = 0
    for k in order:
        b, en = header[k]["data_offsets"]
        assert b == pos, k
        pos = en
    assert pos == len(data)
    try:
        import torch
        t = torch.frombuffer(bytearray(data[header["conv.weight"]["data_offsets"][0]:
                                            header["conv.weight"]["data_offsets"][1]]),
                             dtype=torch.float32)
        assert t.tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]
    except ImportError:
        pass
    print("python check of %s: ok (%d tensors)" % (os.path.basename(path), len(header)))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        check(sys.argv[2])
    elif len(sys.argv) in (2, 3):
        generate(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else None)
    else:
        sys.exit(__doc__)
