"""Helpers shared by medtl's Python test and benchmark scripts (run with
Debian's /usr/bin/python3, which has torch): safetensors files written and
read without the safetensors package, psql calls, ok/FAIL reporting."""
import json
import os
import struct
import subprocess
import sys

PSQL = os.environ.get("MEDTL_PSQL", "/usr/lib/postgresql/15/bin/psql")


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


def rel(a, b):
    """Relative error of torch tensor a against b, in double:
    max|a - b| / max(max|b|, 1e-6)."""
    a = a.double()
    b = b.double()
    return float((a - b).abs().max() / max(float(b.abs().max()), 1e-6))


def bn_random_affine(model, g):
    """Every BatchNorm2d of a torch model gets a random affine (weight in
    [0.5, 1.5), bias in [-0.2, 0.2), drawn from generator g) and running
    statistics reset for bn_calibrate; returns those modules."""
    import torch
    bns = [mod for mod in model.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for mod in bns:
            c = mod.num_features
            mod.weight.copy_(torch.rand(c, generator=g) + 0.5)
            mod.bias.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
            mod.reset_running_stats()
            mod.momentum = None
    return bns


def bn_calibrate(model, bns, g, shape):
    """Running statistics of the BN modules bns (from bn_random_affine) set to
    those of the activations they produce (as a trained network has), from
    one training-mode forward pass of model on a random batch of `shape`
    drawn from g, then perturbed (mean x [0.8, 1.2) + [-0.1, 0.1), var x
    [0.8, 1.2)); momentum back to 0.1, num_batches_tracked 0."""
    import torch
    with torch.no_grad():
        model.train()
        model(torch.randn(*shape, generator=g))
        for mod in bns:
            c = mod.num_features
            mod.momentum = 0.1
            mod.running_mean.mul_(torch.rand(c, generator=g) * 0.4 + 0.8)
            mod.running_mean.add_(torch.rand(c, generator=g) * 0.2 - 0.1)
            mod.running_var.mul_(torch.rand(c, generator=g) * 0.4 + 0.8)
            mod.num_batches_tracked.zero_()


def float64_spread(step, x, grads64, after64, seed, runs=8, eps=1e-6):
    """How far float64's own training step moves when its input x is
    perturbed: step(xp) -> (gradients, state after the step) runs it from
    xp = x + eps * N(0, 1) (generator seeded seed + 10 + r for r = 1..runs);
    returns per tensor the largest rel() from grads64 / after64, the
    unperturbed float64 results, as two dicts."""
    import torch
    spread_g, spread_a = {}, {}
    for r in range(1, runs + 1):
        g = torch.Generator().manual_seed(seed + 10 + r)
        pg, pa = step(x.double() + eps * torch.randn(x.shape, generator=g).double())
        for k in pg:
            spread_g[k] = max(spread_g.get(k, 0.0), rel(pg[k], grads64[k]))
        for k in pa:
            spread_a[k] = max(spread_a.get(k, 0.0), rel(pa[k], after64[k]))
    return spread_g, spread_a


def backward_and_step(model, opt, loss):
    """loss.backward(), then opt.step(): returns the gradients (as they were
    before the step) and the model's state after it (num_batches_tracked
    left out), detached copies by name."""
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    after = {n: t.detach().clone() for n, t in model.state_dict().items()
             if not n.endswith("num_batches_tracked")}
    return grads, after
