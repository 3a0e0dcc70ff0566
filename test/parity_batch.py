#!/usr/bin/python3
"""Batched inference parity (run by test/run with Debian's /usr/bin/python3).

parity_torch.py scores one image per call.  Here the batched path is
checked: for densenet121 (channel concatenation), efficientnet_b0 (channel
scaling), mobilenet_v2 and resnet18, a seeded torchvision model with
randomised batch-norm statistics (parity_torch.build_model) is imported and
five images are scored with medtl.predict_batch(..., batch_size => 5) (one
forward pass of 5) and with medtl.predict_proba one at a time; both must
match torch on the same batch of 5 within 1e-5 (absolute, probabilities),
and the images must give different probabilities (else nothing was shown).

Last line: "batch: N passed, M failed"; exit status 1 when M > 0.
"""
import os
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from medtl_testlib import Report, psql as _psql, sql_lit, write_safetensors  # noqa: E402
from parity_torch import build_model, make_image, to_input, IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

DB = "medtl_parity_batch"
TOL = 1e-5
report = Report("batch")


def psql(sql):
    return _psql(sql, DB)


def arrays(rows):
    return [[float(v) for v in r.strip("{}").split(",")] for r in rows]


def main():
    import numpy as np
    import torch
    from PIL import Image

    base = os.environ.get("MEDTL_WORK") or tempfile.mkdtemp(prefix="medtl_batch_")
    work = os.path.join(base, "batch")
    os.makedirs(work, exist_ok=True)
    os.chmod(base, 0o755)
    os.chmod(work, 0o755)
    _psql("DROP DATABASE IF EXISTS %s;" % DB, "postgres")
    _psql("CREATE DATABASE %s;" % DB, "postgres")
    try:
        psql("CREATE EXTENSION medtl;")
        rng = np.random.default_rng(3)
        images = []
        for i in range(5):
            pixels = make_image(rng, i)
            path = os.path.join(work, "b%d.png" % i)
            Image.fromarray(pixels, "RGB").save(path)
            os.chmod(path, 0o644)
            images.append((path, pixels))
        psql("CREATE TABLE t AS SELECT i, medtl.read_server_file(p) AS image FROM (VALUES %s) v(i, p);"
             % ", ".join("(%d, %s)" % (i, sql_lit(p)) for i, (p, _) in enumerate(images)))
        calib = torch.cat([to_input(make_image(np.random.default_rng(9), i % 2), IMAGENET_MEAN, IMAGENET_STD)
                           for i in range(4)])
        x = torch.cat([to_input(px, IMAGENET_MEAN, IMAGENET_STD) for _, px in images])
        for arch in ("densenet121", "efficientnet_b0", "mobilenet_v2", "resnet18"):
            model = build_model(arch, 5, 1234, calib)
            path = os.path.join(work, "%s.safetensors" % arch)
            write_safetensors(path, model.state_dict())
            psql("SELECT medtl.import_model_file(%s, %s, %s);" % (sql_lit(arch), sql_lit(arch), sql_lit(path)))
            os.unlink(path)
            single = np.array(arrays(psql("SELECT medtl.predict_proba(%s, image) FROM t ORDER BY i;" % sql_lit(arch))))
            batch = np.array(arrays(psql("SELECT probabilities FROM medtl.predict_batch(%s, ARRAY(SELECT image FROM t "
                                         "ORDER BY i), 5) ORDER BY ord;" % sql_lit(arch))))
            with torch.no_grad():
                want = torch.softmax(model(x), 1).numpy()
            spread = float(np.abs(want - want[0]).max())
            eb = float(np.abs(batch - want).max())
            es = float(np.abs(single - want).max())
            report(eb <= TOL and es <= TOL and spread > 100 * TOL,
                   "%s: 5 images in one batched pass vs torch %.2g, one at a time vs torch %.2g "
                   "(images differ by %.2g)" % (arch, eb, es, spread))
            psql("SELECT medtl.drop_model(%s);" % sql_lit(arch))
    except Exception:
        traceback.print_exc()
        report(False, "exception")
    finally:
        _psql("DROP DATABASE IF EXISTS %s;" % DB, "postgres")
    report.finish()


if __name__ == "__main__":
    main()
