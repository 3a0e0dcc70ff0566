#!/usr/bin/python3
"""PyTorch parity test for medtl (run by test/run with Debian's /usr/bin/python3).

For resnet18, resnet34, resnet50, mobilenet_v2, densenet121, efficientnet_b0
and vit_b_16 (torchvision 0.14) it builds a seeded model with randomised
batch-norm statistics and affine parameters (so that BN folding is
exercised; for vit_b_16 the head, class token, attention biases and layer
norms its constructor zeroes or sets to 1), writes its state_dict as safetensors with a
small hand-written writer, writes seeded random 224x224 RGB PNG images, and
compares medtl.logits / medtl.embed / medtl.predict against the same forward
pass in torch (float32, eval mode).  mobilenet_v2 is also checked with
padding => 'tf_same', emulated in torch by F.pad(x, (0,1,0,1)) before every
stride-2 3x3 conv whose own padding is set to 0.  vit_b_16 (86M parameters,
two images) is also run with input_size 96 and compared with
torchvision's vit_b_16(image_size=96) loaded through interpolate_embeddings;
its export is written by the server (lo_export) instead of psql hex.

Run some architectures alone by naming them as arguments.

Error measure: max |medtl - torch| / max |torch| over the output vector; it
must be <= 1e-4.  Also checked: the models row (mean/std from metadata or
arguments, padding, class count); the resize path on two non-224 images
(resnet18; PIL BILINEAR, with or without uint8 rounding); and that the
oracle's outputs differ between images, and between tf_same and symmetric
padding, by far more than the tolerance (else the checks would prove nothing).

Environment (set by test/run): PGHOST, PGPORT, PGUSER, PGDATABASE for psql and
MEDTL_WORK, a directory the server (user postgres) can read.

Arguments: architecture names to run only their cases; --keep keeps the
work directory.

Output: one "ok: ..." or "FAIL: ..." line per check and, as the last line,
"parity: N passed, M failed".  Exit status 1 when M > 0.
"""
import json
import os
import shutil
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from medtl_testlib import Report, read_safetensors, write_safetensors, sql_lit  # noqa: E402
from medtl_testlib import psql as _psql  # noqa: E402

PSQL = "/usr/lib/postgresql/15/bin/psql"
DB = "medtl_parity"
TOL = 1e-4
SEED = 20240517
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# (name in medtl, arch, num_classes, padding, mean/std passed to import_model_file or None)
CASES = [
    ("p_resnet18", "resnet18", 5, "symmetric", None),
    ("p_resnet34", "resnet34", 1000, "symmetric", None),
    ("p_resnet50", "resnet50", 5, "symmetric", None),
    ("p_mobilenet_v2", "mobilenet_v2", 5, "symmetric", None),
    # same weights file as above, TF SAME padding, explicit mean/std overriding the metadata
    ("p_mobilenet_v2_tf", "mobilenet_v2", 5, "tf_same", ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])),
    ("p_densenet121", "densenet121", 4, "symmetric", None),
    ("p_efficientnet_b0", "efficientnet_b0", 6, "symmetric", None),
    ("p_vit_b_16", "vit_b_16", 5, "symmetric", None),
]
N_IMAGES = {"resnet50": 2, "densenet121": 2, "vit_b_16": 2}          # default 3
VIT_SIZE = 96       # vit_b_16 also imported with this input_size (6x6 patch grid)

report = Report("parity")


def psql(sql, db=DB):
    return _psql(sql, db)


def sql_real_array(v):
    return "ARRAY[%s]::real[]" % ",".join(repr(float(x)) for x in v)


def sql_text_array(v):
    return "ARRAY[%s]::text[]" % ",".join(sql_lit(x) for x in v)


def parse_real_array(s):
    s = s.strip()
    if not (s.startswith("{") and s.endswith("}")):
        raise ValueError("not an array: %r" % s[:80])
    body = s[1:-1]
    return [float(x) for x in body.split(",")] if body else []


def make_image(rng, i):
    """A seeded 224x224 RGB uint8 image with structure at several scales (smooth
    blobs, a gradient, edges and pixel noise), different for each i, so that the
    outputs depend on the image and on border handling, not just on averages."""
    import numpy as np
    from PIL import Image
    yy, xx = np.mgrid[0:224, 0:224].astype(np.float32) / 223.0
    low = rng.random((4 + 3 * i, 4 + 3 * i, 3)).astype(np.float32) * 255.0
    low = np.stack([np.asarray(Image.fromarray(low[:, :, c], "F").resize((224, 224), Image.BICUBIC))
                    for c in range(3)], axis=2)
    grad = 255.0 * np.stack([xx, yy, 1.0 - xx * yy], axis=2)
    img = 0.5 * low + 0.3 * grad
    img[(xx * 223).astype(int) % (16 + 8 * i) < 3] = 255.0 * (i % 2)     # stripes with edges
    img += rng.normal(0.0, 12.0 + 10.0 * i, size=img.shape)              # pixel noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def build_model(arch, num_classes, seed, calib):
    """A seeded torchvision model whose batch-norm layers hold nontrivial values.

    Freshly initialised BN layers are identities (mean 0, var 1, weight 1,
    bias 0), which would leave BN folding untested; purely random statistics
    make a deep random network's output nearly independent of its input, which
    would leave everything before the head untested.  So the statistics are
    first measured on calibration images (as training would), then perturbed:
    var *= U(0.5, 2), mean += N(0, 0.1) * std, weight ~ U(0.5, 1.5),
    bias ~ N(0, 0.1)."""
    import torch
    import torchvision
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(num_classes=num_classes)
    if arch == "vit_b_16":
        return randomise_vit(model, seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None                      # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(calib)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in bns:
            c = m.num_features
            m.momentum = 0.1
            m.running_var.mul_(torch.rand(c, generator=g) * 1.5 + 0.5)
            m.running_mean.add_(torch.randn(c, generator=g) * 0.1 * m.running_var.sqrt())
            m.weight.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.copy_(torch.randn(c, generator=g) * 0.1)
            m.num_batches_tracked.fill_(int(torch.randint(0, 1000, (1,), generator=g)))
    model.eval()
    return model


def randomise_vit(model, seed):
    """vit_b_16 as torchvision builds it, but with the tensors its
    constructor zeroes or sets to 1 randomised: heads.head (zero, which
    would make every logit 0), class_token, the attention biases and the
    layer norms' affine parameters."""
    import torch
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.startswith("heads.head."):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            elif n == "class_token":
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif ".ln" in n or n.startswith("encoder.ln"):
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
            elif n.endswith("in_proj_bias") or n.endswith("out_proj.bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            elif n == "encoder.pos_embedding":
                p.mul_(10.0)        # std 0.2: positions matter to the logits
    model.eval()
    return model


def to_input(pixels, mean, std):
    """(pixel/255 - mean)/std in float32, NCHW."""
    import numpy as np
    import torch
    x = (pixels.astype(np.float32) / np.float32(255.0) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


class TfSamePadding:
    """Emulate TF 'SAME' padding on stride-2 3x3 convs (even inputs: 0 top/left,
    1 bottom/right) with forward pre-hooks; undo() restores the model."""

    def __init__(self, model):
        import torch
        import torch.nn.functional as F
        self.saved = []
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Conv2d) and tuple(m.stride) == (2, 2) and tuple(m.kernel_size) == (3, 3):
                h = m.register_forward_pre_hook(lambda mod, inp: (F.pad(inp[0], (0, 1, 0, 1)),))
                self.saved.append((name, m, m.padding, h))
                m.padding = (0, 0)

    def names(self):
        return [s[0] for s in self.saved]

    def undo(self):
        for _, m, pad, h in self.saved:
            h.remove()
            m.padding = pad


def torch_forward(model, x):
    """Logits and pooled features (the input of the final Linear layer)."""
    import torch
    head = model.fc if hasattr(model, "fc") else (model.heads if hasattr(model, "heads") else model.classifier)
    box = {}
    h = head.register_forward_pre_hook(lambda mod, inp: box.__setitem__("feat", inp[0].detach().clone()))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        h.remove()
    return logits[0].numpy(), box["feat"][0].reshape(-1).numpy()


def rel_err(got, want):
    import numpy as np
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return float("inf"), "shape %s vs torch %s" % (got.shape, want.shape)
    scale = float(np.max(np.abs(want)))
    diff = float(np.max(np.abs(got - want)))
    return (diff / scale if scale > 0 else diff), "max|diff|=%.3g max|torch|=%.3g" % (diff, scale)


def check_resize(name, model, mean, std, resized):
    """Images that are not input_size x input_size are resized with PIL BILINEAR
    semantics, and (8-bit sources) rounded back to uint8 as PIL does for an RGB
    image: medtl must match that oracle.  The float-plane resize is printed
    for reference."""
    import numpy as np
    from PIL import Image
    for img_name, img_path, pixels in resized:
        src = Image.fromarray(pixels, "RGB")
        u8 = np.asarray(src.resize((224, 224), Image.BILINEAR))
        fl = np.stack([np.asarray(Image.fromarray(pixels[:, :, c].astype(np.float32), "F")
                                  .resize((224, 224), Image.BILINEAR)) for c in range(3)], axis=2)
        t_u8 = torch_forward(model, to_input(u8, mean, std))[0]
        t_fl = torch_forward(model, to_input(fl, mean, std))[0]
        out = psql("SELECT medtl.logits(%s, medtl.read_server_file(%s));" % (sql_lit(name), sql_lit(img_path)))
        m = parse_real_array(out[0])
        e_u8, d_u8 = rel_err(m, t_u8)
        e_fl, d_fl = rel_err(m, t_fl)
        report(e_u8 <= TOL,
               "%s %s (%dx%d -> 224x224) logits: rel err %.3g vs PIL uint8 resize (%s), %.3g vs PIL float resize (%s)"
               % (name, img_name, pixels.shape[1], pixels.shape[0], e_u8, d_u8, e_fl, d_fl))


def check_export(name, arch, ncls, model, labels, padding):
    """medtl.export_model's bytes load into torchvision with strict=True and
    hold exactly the tensors imported; the metadata describes the model."""
    import torchvision
    path = os.path.join(os.environ.get("MEDTL_WORK", tempfile.gettempdir()), "export_%s.safetensors" % name)
    if arch == "vit_b_16" and os.environ.get("MEDTL_WORK"):
        # 344 MB: written by the server (MEDTL_WORK is the postgres-owned
        # work directory) rather than sent through psql as hex
        psql("SELECT lo_from_bytea(0, medtl.export_model(%s)) AS lo \\gset\n"
             "SELECT lo_export(:lo, %s), lo_unlink(:lo);" % (sql_lit(name), sql_lit(path)))
    else:
        hexdata = psql("SELECT encode(medtl.export_model(%s), 'hex');" % sql_lit(name))[0]
        with open(path, "wb") as f:
            f.write(bytes.fromhex(hexdata))
    sd, meta = read_safetensors(path)
    os.unlink(path)
    fresh = getattr(torchvision.models, arch)(num_classes=ncls)
    res = fresh.load_state_dict(sd, strict=True)
    orig = model.state_dict()
    same = all(torch_equal(sd[k], orig[k]) for k in orig if not k.endswith("num_batches_tracked"))
    meta_ok = (meta.get("arch") == arch and json.loads(meta.get("labels", "[]")) == labels
               and meta.get("padding") == padding and meta.get("num_classes") == str(ncls))
    report(not res.missing_keys and not res.unexpected_keys and same and meta_ok,
           "%s export_model: load_state_dict(strict=True) %s, tensors identical %s, metadata %s"
           % (name, res, same, {k: meta.get(k) for k in ("arch", "padding", "num_classes")}))


def check_vit_size(name, path, model, ncls, labels, images):
    """vit_b_16 with input_size VIT_SIZE (same 224 weights) against
    torchvision's vit_b_16(image_size=VIT_SIZE) loaded with the state_dict
    that interpolate_embeddings(VIT_SIZE, 16, ...) makes of them.  The images
    are stored at VIT_SIZE x VIT_SIZE, so no resize is involved."""
    import numpy as np
    import torchvision
    from PIL import Image
    from torchvision.models.vision_transformer import interpolate_embeddings
    sized = torchvision.models.vit_b_16(num_classes=ncls, image_size=VIT_SIZE)
    sized.load_state_dict(interpolate_embeddings(VIT_SIZE, 16, dict(model.state_dict())))
    sized.eval()
    # the same model at another input size: the models row's input_size
    # (import_model's input_size argument sets the same column)
    sname = "%s_%d" % (name, VIT_SIZE)
    psql("UPDATE medtl.models SET input_size = %d, name = %s WHERE name = %s;"
         % (VIT_SIZE, sql_lit(sname), sql_lit(name)))
    work = os.path.dirname(images[0][1])
    seen = []
    smalls = []
    for img_name, _, pixels in images[:2]:
        small = np.asarray(Image.fromarray(pixels, "RGB").resize((VIT_SIZE, VIT_SIZE), Image.BILINEAR))
        spath = os.path.join(work, "%s_%d.png" % (img_name, VIT_SIZE))
        Image.fromarray(small, "RGB").save(spath)
        os.chmod(spath, 0o644)
        smalls.append((img_name, spath, small))
    rows = psql("SELECT medtl.logits(%s, img), medtl.embed(%s, img) FROM (VALUES %s) v(i, img) ORDER BY i;"
                % (sql_lit(sname), sql_lit(sname),
                   ", ".join("(%d, medtl.read_server_file(%s))" % (i, sql_lit(p)) for i, (_, p, _) in enumerate(smalls))))
    for (img_name, spath, small), row in zip(smalls, rows):
        t_logits, t_feat = torch_forward(sized, to_input(small, IMAGENET_MEAN, IMAGENET_STD))
        s_logits, s_embed = row.split("|")
        e, detail = rel_err(parse_real_array(s_logits), t_logits)
        e2, detail2 = rel_err(parse_real_array(s_embed), t_feat)
        report(e <= TOL and e2 <= TOL,
               "%s %s at %dx%d (position embedding 14x14 -> %dx%d): logits rel err %.3g (%s), embed rel err %.3g"
               % (sname, img_name, VIT_SIZE, VIT_SIZE, VIT_SIZE // 16, VIT_SIZE // 16, e, detail, e2))
        seen.append(t_logits)
    # the resize matters: without it (the 224 grid's first 36 positions, say)
    # torch's logits would differ by far more than the tolerance
    plain = torchvision.models.vit_b_16(num_classes=ncls, image_size=VIT_SIZE)
    sd = dict(model.state_dict())
    sd["encoder.pos_embedding"] = sd["encoder.pos_embedding"][:, :1 + (VIT_SIZE // 16) ** 2, :]
    plain.load_state_dict(sd)
    plain.eval()
    small = np.asarray(Image.fromarray(images[0][2], "RGB").resize((VIT_SIZE, VIT_SIZE), Image.BILINEAR))
    d = rel_err(torch_forward(plain, to_input(small, IMAGENET_MEAN, IMAGENET_STD))[0], seen[0])[0]
    report(d > 100 * TOL, "%s sanity: logits with an unresized position embedding differ by rel %.3g (> %.0e)"
           % (sname, d, 100 * TOL))
    psql("UPDATE medtl.models SET input_size = 224, name = %s WHERE name = %s;" % (sql_lit(name), sql_lit(sname)))


# torchvision's fresh classifier heads: (weight bound as a function of
# (in_features, out_features), bias all zero)
HEAD_INIT = {
    "densenet121": ("classifier", lambda fin, fout: fin ** -0.5, True),       # Linear default, bias 0
    "efficientnet_b0": ("classifier.1", lambda fin, fout: fout ** -0.5, True),  # U(+-1/sqrt(out)), bias 0
}


def check_create_model(name, arch, model):
    """medtl.create_model on the imported backbone: a fresh head initialised
    as torchvision does (bounds, zero bias, spread), the same for the same
    seed and different for another, every backbone tensor unchanged; the
    export loads into torchvision with strict=True."""
    import numpy as np
    import torchvision
    head, bound_of, zero_bias = HEAD_INIT[arch]
    labels = ["a", "b", "c", "d", "e", "f", "g"]
    k = len(labels)
    psql("SELECT medtl.create_model('%s_new', %s, %s, seed => 7, replace => true);"
         % (name, sql_lit(name), sql_text_array(labels)))
    psql("SELECT medtl.create_model('%s_same', %s, %s, seed => 7, replace => true);"
         % (name, sql_lit(name), sql_text_array(labels)))
    psql("SELECT medtl.create_model('%s_other', %s, %s, seed => 8, replace => true);"
         % (name, sql_lit(name), sql_text_array(labels)))
    sd = {}
    for suffix in ("new", "same", "other"):
        hexdata = psql("SELECT encode(medtl.export_model('%s_%s'), 'hex');" % (name, suffix))[0]
        path = os.path.join(os.environ.get("MEDTL_WORK", tempfile.gettempdir()), "create_%s.safetensors" % name)
        with open(path, "wb") as f:
            f.write(bytes.fromhex(hexdata))
        sd[suffix] = read_safetensors(path)[0]
        os.unlink(path)
    fresh = getattr(torchvision.models, arch)(num_classes=k)
    res = fresh.load_state_dict(sd["new"], strict=True)
    w = sd["new"][head + ".weight"].numpy().astype(np.float64)
    b = sd["new"][head + ".bias"].numpy().astype(np.float64)
    fout, fin = w.shape
    bound = bound_of(fin, fout)
    # a uniform(-bound, bound) sample of this size: max near bound, std bound/sqrt(3)
    ok_w = float(np.abs(w).max()) <= bound and float(np.abs(w).max()) > 0.95 * bound \
        and abs(float(w.std()) / (bound / 3 ** 0.5) - 1) < 0.05
    ok_b = (not zero_bias) or float(np.abs(b).max()) == 0.0
    orig = model.state_dict()
    backbone_same = all(torch_equal(sd["new"][t], orig[t]) for t in orig
                        if not t.startswith(head + ".") and not t.endswith("num_batches_tracked"))
    seeded = torch_equal(sd["new"][head + ".weight"], sd["same"][head + ".weight"]) and \
        not torch_equal(sd["new"][head + ".weight"], sd["other"][head + ".weight"])
    report(not res.missing_keys and not res.unexpected_keys and w.shape == (k, fin) and ok_w and ok_b
           and backbone_same and seeded,
           "%s create_model: head %s %s, |w| max %.4g (bound %.4g), std/expected %.3f, |bias| max %g; "
           "backbone unchanged %s; same seed same head, other seed other head %s; strict load %s"
           % (name, head, list(w.shape), float(np.abs(w).max()), bound, float(w.std()) / (bound / 3 ** 0.5),
              float(np.abs(b).max()), backbone_same, seeded, res))


def torch_equal(a, b):
    import torch
    return bool(torch.equal(a.to(b.dtype), b))


def run_case(case, files, images, resized):
    import numpy as np
    name, arch, ncls, padding, norm = case
    model = files[arch]["model"]
    mean, std = norm if norm else (IMAGENET_MEAN, IMAGENET_STD)
    labels = ["class_%d" % i for i in range(ncls)]
    args = ["%s, %s, %s" % (sql_lit(name), sql_lit(arch), sql_lit(files[arch]["path"])),
            "labels => " + sql_text_array(labels), "padding => " + sql_lit(padding),
            "replace => true"]
    if norm:
        args += ["mean => " + sql_real_array(mean), "std => " + sql_real_array(std)]
    psql("SELECT medtl.import_model_file(%s);" % ", ".join(args))
    row = psql("SELECT num_classes, mean, std, padding FROM medtl.models WHERE name = %s;" % sql_lit(name))
    report(row == ["%d|%s|%s|%s" % (ncls, "{" + ",".join("%g" % v for v in mean) + "}",
                                    "{" + ",".join("%g" % v for v in std) + "}", padding)],
           "%s import (%s, %d classes, padding %s): models row %s" % (name, arch, ncls, padding, row))
    check_export(name, arch, ncls, model, labels, padding)
    if arch in HEAD_INIT:
        check_create_model(name, arch, model)

    n = N_IMAGES.get(arch, 3)
    inputs = [(img_name, img_path, to_input(pixels, mean, std)) for img_name, img_path, pixels in images[:n]]
    # oracle without the TF SAME emulation, to show the test tells the paddings apart
    sym_logits = [torch_forward(model, x)[0] for _, _, x in inputs] if padding == "tf_same" else None
    seen = []

    hooks = TfSamePadding(model) if padding == "tf_same" else None
    if hooks is not None:
        print("   (torch oracle: TF SAME emulated on %s)" % ", ".join(hooks.names()), flush=True)
    # every image in one query: one backend loads the model once
    rows = psql("SELECT medtl.logits(%s, img), medtl.embed(%s, img), medtl.predict(%s, img) "
                "FROM (VALUES %s) v(i, img) ORDER BY i;"
                % (sql_lit(name), sql_lit(name), sql_lit(name),
                   ", ".join("(%d, medtl.read_server_file(%s))" % (i, sql_lit(p))
                             for i, (_, p, _) in enumerate(inputs))))
    if len(rows) != len(inputs) or any(r.count("|") != 2 for r in rows):
        raise RuntimeError("unexpected psql output: %r" % rows[:2])
    try:
        for i, (img_name, img_path, x) in enumerate(inputs):
            t_logits, t_feat = torch_forward(model, x)
            s_logits, s_embed, s_pred = rows[i].split("|")
            m_logits = parse_real_array(s_logits)
            m_embed = parse_real_array(s_embed)
            e, detail = rel_err(m_logits, t_logits)
            report(e <= TOL, "%s %s logits[%d]: rel err %.3g (%s)" % (name, img_name, len(t_logits), e, detail))
            seen.append((t_logits, m_logits))
            e, detail = rel_err(m_embed, t_feat)
            report(e <= TOL, "%s %s embed[%d]: rel err %.3g (%s)" % (name, img_name, len(t_feat), e, detail))
            top = int(np.argmax(t_logits))
            ok = s_pred == labels[top]
            if not ok and s_pred in labels:
                # a near-tie within the tolerance is not a failure
                gap = float(t_logits[top] - t_logits[labels.index(s_pred)])
                ok = gap <= TOL * float(np.max(np.abs(t_logits)))
            report(ok, "%s %s predict: medtl %s, torch argmax %s (logit %.5g)"
                   % (name, img_name, s_pred, labels[top], float(t_logits[top])))
    finally:
        if hooks is not None:
            hooks.undo()
    if arch == "resnet18":
        check_resize(name, model, mean, std, resized)
    if arch == "vit_b_16":
        check_vit_size(name, files[arch]["path"], model, ncls, labels, images)
    # The checks above mean something only if the outputs depend on the image
    # (and, for tf_same, on the padding) by far more than the tolerance.
    spread = max(rel_err(seen[0][0], t)[0] for t, _ in seen[1:])
    report(spread > 100 * TOL, "%s oracle sanity: torch logits differ between images by rel %.3g (> %.0e)"
           % (name, spread, 100 * TOL))
    if sym_logits is not None:
        d = min(rel_err(m, s)[0] for (_, m), s in zip(seen, sym_logits))
        report(d > 100 * TOL, "%s padding sanity: medtl tf_same logits differ from torch symmetric-padding "
               "logits by rel >= %.3g (> %.0e)" % (name, d, 100 * TOL))


def main():
    try:
        import numpy as np
        import torch
        import torchvision
        from PIL import Image
    except ImportError as e:
        print("FAIL: PyTorch parity needs torch, torchvision, numpy and PIL (Debian python3-torch, "
              "python3-torchvision, python3-numpy, python3-pil; run with /usr/bin/python3): %s" % e)
        report(False, "PyTorch missing")
        report.finish()

    print("torch %s, torchvision %s, threads %d" % (torch.__version__, torchvision.__version__,
                                                    torch.get_num_threads()), flush=True)
    base = os.environ.get("MEDTL_WORK") or tempfile.mkdtemp(prefix="medtl_parity_")
    work = os.path.join(base, "parity")
    os.makedirs(work, exist_ok=True)
    if not os.environ.get("MEDTL_WORK"):
        os.chmod(base, 0o755)           # the server (user postgres) must read the files
    os.chmod(work, 0o755)

    db_created = False
    try:
        psql("DROP DATABASE IF EXISTS %s;" % DB, db="postgres")
        psql("CREATE DATABASE %s;" % DB, db="postgres")
        db_created = True
        psql("CREATE EXTENSION medtl;")

        rng = np.random.default_rng(SEED)
        images = []
        for i in range(3):
            pixels = make_image(rng, i)
            path = os.path.join(work, "rand%d.png" % i)
            Image.fromarray(pixels, "RGB").save(path)
            os.chmod(path, 0o644)
            back = np.asarray(Image.open(path).convert("RGB"))
            assert np.array_equal(back, pixels)
            images.append(("rand%d" % i, path, pixels))

        resized = []
        for i, (w, h) in enumerate([(300, 260), (150, 180)]):
            pixels = np.asarray(Image.fromarray(make_image(rng, i)).resize((w, h), Image.BICUBIC))
            path = os.path.join(work, "resize%dx%d.png" % (w, h))
            Image.fromarray(pixels, "RGB").save(path)
            os.chmod(path, 0o644)
            resized.append(("resize%dx%d" % (w, h), path, pixels))

        crng = np.random.default_rng(SEED + 1)
        calib = torch.cat([to_input(make_image(crng, i % 3), IMAGENET_MEAN, IMAGENET_STD) for i in range(4)])

        files = {}
        only = [a for a in sys.argv[1:] if not a.startswith("--")]
        for k, (name, arch, ncls, padding, norm) in enumerate(CASES):
            if only and arch not in only:
                continue
            try:
                if arch not in files:
                    model = build_model(arch, ncls, SEED + 17 * k, calib)
                    path = os.path.join(work, "%s.safetensors" % arch)
                    write_safetensors(path, model.state_dict(), {
                        "arch": arch, "mean": json.dumps(IMAGENET_MEAN), "std": json.dumps(IMAGENET_STD)})
                    files[arch] = {"model": model, "path": path}
                run_case(CASES[k], files, images, resized)
            except Exception:
                report(False, "%s (%s): exception\n%s" % (name, arch, traceback.format_exc().rstrip()))
    except Exception:
        report(False, "setup: exception\n%s" % traceback.format_exc().rstrip())
    finally:
        if db_created:
            try:
                psql("DROP DATABASE IF EXISTS %s;" % DB, db="postgres")
            except Exception as e:
                print("warning: could not drop database %s: %s" % (DB, e), flush=True)
        if "--keep" not in sys.argv:
            shutil.rmtree(work, ignore_errors=True)
    report.finish()


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except BaseException:
        report(False, "exception")
        traceback.print_exc()
        report.finish()
