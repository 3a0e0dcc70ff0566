"""Helpers shared by medtl's Python test and benchmark scripts (run with
Debian's /usr/bin/python3, which has torch): safetensors files written and
read without the safetensors package, psql calls, ok/FAIL reporting."""
import json
import os
import struct
import subprocess
import sys

PSQL = "/usr/lib/postgresql/15/bin/psql"


class Report:
    """Counts checks, prints `ok: ...` / `FAIL: ...` and a closing
    `NAME: N passed, M failed` line, as test/run expects."""

    def __init__(self, name):
        self.name = name
        self.passed = 0
        self.failed = 0

    def __call__(self, ok, msg):
        if ok:
            self.passed += 1
            print("ok: " + msg, flush=True)
        else:
            self.failed += 1
            print("FAIL: " + msg, flush=True)

    def finish(self):
        print("%s: %d passed, %d failed" % (self.name, self.passed, self.failed), flush=True)
        sys.exit(1 if self.failed else 0)


def write_safetensors(path, tensors, metadata=None):
    """Write (name, torch tensor) pairs (or a dict) as safetensors: 8-byte LE
    header length, JSON header padded with spaces to a multiple of 8, raw
    little-endian F32/I64 data in the given order."""
    import torch
    items = tensors.items() if hasattr(tensors, "items") else tensors
    header = {}
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    chunks = []
    off = 0
    for name, t in items:
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.float32:
            dtype, data = "F32", t.numpy().astype("<f4").tobytes()
        elif t.dtype == torch.int64:
            dtype, data = "I64", t.numpy().astype("<i8").tobytes()
        else:
            raise ValueError("unsupported dtype %s for %s" % (t.dtype, name))
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        chunks.append(data)
        off += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((-len(text)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for c in chunks:
            f.write(c)
    os.chmod(path, 0o644)


def read_safetensors(path):
    """Strict minimal reader -> ({name: torch tensor}, metadata dict); F32 and I64."""
    import numpy as np
    import torch
    dtypes = {"F32": "<f4", "I64": "<i8"}
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = memoryview(blob)[8 + n:]
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        arr = np.frombuffer(data[b:end], dtype=dtypes[e["dtype"]]).reshape(e["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out, header.get("__metadata__", {})


def psql(sql, db, timing=False):
    """Run SQL through psql; stdout lines (unaligned, tuples only, '|' separated)."""
    r = subprocess.run([PSQL, "-X", "-At", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-f", "-"],
                       input=("\\timing on\n" if timing else "") + sql, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("psql failed (rc %d): %s\nSQL: %s" % (r.returncode, r.stderr.strip(), sql[:500]))
    return [l for l in r.stdout.split("\n") if l != ""]


def sql_lit(s):
    return "'" + str(s).replace("'", "''") + "'"
