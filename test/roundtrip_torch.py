#!/usr/bin/python3
"""Round trip through PyTorch (run by test/run with Debian's /usr/bin/python3).

For resnet18 and mobilenet_v2: a seeded torchvision model with nontrivial
batch-norm statistics (parity_torch.build_model) is saved as safetensors,
imported into medtl, turned into a 3-class classifier with
medtl.create_model (input size 96), fine-tuned for one epoch on 18 generated
images with every layer trainable (medtl.train, freeze => 'none'), exported
with medtl.export_model, and loaded by PyTorch with load_state_dict(strict=True)
into torchvision's model with a 3-class head.  Checked:

  - the export loads strictly and carries the labels and input size;
  - training changed the weights (the head and the first convolution);
  - PyTorch's logits of the fine-tuned model on the images equal medtl's
    (medtl.logits) within 1e-4 relative, and every prediction agrees;
  - medtl.import_model of the exported bytes scores the same as the trained
    model (medtl -> PyTorch -> medtl).

Environment as for parity_torch.py (PGHOST, PGPORT, PGUSER, MEDTL_WORK).
Last line: "roundtrip: N passed, M failed"; exit status 1 when M > 0.
"""
import os
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from medtl_testlib import Report, psql as _psql, read_safetensors, sql_lit, write_safetensors  # noqa: E402
from parity_torch import build_model, rel_err  # noqa: E402

DB = "medtl_roundtrip"
SIZE = 96
LABELS = ["circle", "stripes", "noise"]
TOL = 1e-4
report = Report("roundtrip")


def psql(sql):
    return _psql(sql, DB)


def make_images(rng, work):
    """18 RGB PNGs of SIZE x SIZE, 6 per label, with class-dependent patterns."""
    import numpy as np
    from PIL import Image
    out = []
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for i in range(18):
        label = LABELS[i % 3]
        base = rng.integers(0, 60, size=(SIZE, SIZE, 3))
        if label == "circle":
            r = rng.integers(15, 40)
            m = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < r * r
            base[m] += 150
        elif label == "stripes":
            base[(xx // rng.integers(4, 12)) % 2 == 0] += 120
        else:
            base += rng.integers(0, 190, size=(SIZE, SIZE, 3))
        pixels = np.clip(base, 0, 255).astype(np.uint8)
        path = os.path.join(work, "img_%02d.png" % i)
        Image.fromarray(pixels, "RGB").save(path)
        os.chmod(path, 0o644)
        out.append((path, label, pixels))
    return out


def to_batch(images, mean, std):
    import numpy as np
    import torch
    x = np.stack([p for _, _, p in images]).astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def parse(s):
    return [float(v) for v in s.strip("{}").split(",")]


def run_arch(arch, images, work):
    import numpy as np
    import torch
    import torchvision
    calib = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    base = build_model(arch, 10, 1234, calib)
    base_path = os.path.join(work, "rt_base_%s.safetensors" % arch)
    write_safetensors(base_path, base.state_dict())
    name = "rt_" + arch
    psql("SELECT medtl.import_model_file(%s, %s, %s);" % (sql_lit(name + "_base"), sql_lit(arch), sql_lit(base_path)))
    psql("SELECT medtl.create_model(%s, %s, %s::text[], input_size => %d, seed => 5);"
         % (sql_lit(name), sql_lit(name + "_base"), sql_lit("{" + ",".join(LABELS) + "}"), SIZE))
    before, _ = read_safetensors_bytes(psql("SELECT encode(medtl.export_model(%s), 'hex');" % sql_lit(name))[0], work, "before")
    psql("SET client_min_messages = warning; SELECT medtl.train(%s, 'rt_images', epochs => 1, batch_size => 6, "
         "freeze => 'none', lr => 1e-3, validation => 0, augment => false, keep_best => 'none');" % sql_lit(name))
    after, meta = read_safetensors_bytes(psql("SELECT encode(medtl.export_model(%s), 'hex');" % sql_lit(name))[0], work, "after")

    head = "fc.weight" if arch.startswith("resnet") else "classifier.1.weight"
    first = "conv1.weight" if arch.startswith("resnet") else "features.0.0.weight"
    report(not torch.equal(before[head], after[head]) and not torch.equal(before[first], after[first]),
           "%s: one epoch changed %s and %s" % (arch, head, first))

    model = getattr(torchvision.models, arch)(num_classes=len(LABELS))
    try:
        model.load_state_dict(after, strict=True)
        report(True, "%s: fine-tuned export loads with load_state_dict(strict=True)" % arch)
    except RuntimeError as e:
        report(False, "%s: strict load failed: %s" % (arch, str(e)[:300]))
        return
    report(meta.get("labels", "").find("stripes") >= 0 and str(meta.get("input_size")) == str(SIZE),
           "%s: export metadata has the labels and input size %d (%s)" % (arch, SIZE, {k: meta[k] for k in ("labels", "input_size") if k in meta}))
    model.eval()
    mean = [float(v) for v in psql("SELECT array_to_string(mean, ',') FROM medtl.models WHERE name = %s;" % sql_lit(name))[0].split(",")]
    std = [float(v) for v in psql("SELECT array_to_string(std, ',') FROM medtl.models WHERE name = %s;" % sql_lit(name))[0].split(",")]
    with torch.no_grad():
        want = model(to_batch(images, mean, std)).numpy()
    rows = psql("SELECT medtl.logits(%s, image), medtl.predict(%s, image) FROM rt_images ORDER BY path;"
                % (sql_lit(name), sql_lit(name)))
    got = np.array([parse(r.split("|")[0]) for r in rows])
    preds = [r.split("|")[1] for r in rows]
    err, detail = rel_err(got, want)
    report(err <= TOL, "%s: PyTorch reproduces the fine-tuned model's logits, rel err %.3g (%s)" % (arch, err, detail))
    agree = sum(LABELS[int(np.argmax(w))] == p for w, p in zip(want, preds))
    report(agree == len(images), "%s: predictions agree on %d/%d images" % (arch, agree, len(images)))

    # and back: the exported bytes imported again score the same
    psql("SELECT medtl.import_model(%s, %s, medtl.export_model(%s));" % (sql_lit(name + "_back"), sql_lit(arch), sql_lit(name)))
    same = psql("SELECT bool_and(medtl.logits(%s, image) = medtl.logits(%s, image)) FROM rt_images;"
                % (sql_lit(name), sql_lit(name + "_back")))[0]
    report(same == "t", "%s: the export imported back scores exactly the same" % arch)


def read_safetensors_bytes(hexdata, work, tag):
    path = os.path.join(work, "export_%s.safetensors" % tag)
    with open(path, "wb") as f:
        f.write(bytes.fromhex(hexdata))
    return read_safetensors(path)


def main():
    try:
        import numpy as np
        import torch  # noqa: F401
        import torchvision  # noqa: F401
        from PIL import Image  # noqa: F401
    except ImportError as e:
        report(False, "the round trip needs Debian's python3-torch, python3-torchvision, python3-pil: %s" % e)
        report.finish()
    base = os.environ.get("MEDTL_WORK") or tempfile.mkdtemp(prefix="medtl_rt_")
    work = os.path.join(base, "roundtrip")
    os.makedirs(work, exist_ok=True)
    os.chmod(base, 0o755)
    os.chmod(work, 0o755)
    _psql("DROP DATABASE IF EXISTS %s;" % DB, "postgres")
    _psql("CREATE DATABASE %s;" % DB, "postgres")
    try:
        psql("CREATE EXTENSION medtl;")
        images = make_images(np.random.default_rng(99), work)
        psql("CREATE TABLE rt_images (path text, label text, image bytea);" +
             "".join("INSERT INTO rt_images VALUES (%s, %s, medtl.read_server_file(%s));"
                     % (sql_lit(os.path.basename(p)), sql_lit(l), sql_lit(p)) for p, l, _ in images))
        images.sort(key=lambda t: os.path.basename(t[0]))
        for arch in ("resnet18", "mobilenet_v2"):
            run_arch(arch, images, work)
    except Exception:
        traceback.print_exc()
        report(False, "exception")
    finally:
        _psql("DROP DATABASE IF EXISTS %s;" % DB, "postgres")
    report.finish()


if __name__ == "__main__":
    main()
