#!/usr/bin/python3
"""PyTorch .pth checkpoints through SQL (run by test/run with Debian's /usr/bin/python3).

A seeded torchvision resnet18 (randomised batch-norm statistics, as in
parity_torch.py) is written with torch.save in several shapes and imported
with medtl.import_model_file; logits must match the same model in torch
within 1e-4 (max |diff| / max |torch|):

  - the plain state_dict, and that of every other architecture of the zoo
    (resnet34, resnet50, mobilenet_v2, densenet121, efficientnet_b0,
    vit_b_16; one image each);
  - a training checkpoint {"epoch", "state_dict", "optimizer"} whose names
    carry DataParallel's "module." prefix and whose fc.weight is a
    non-contiguous (transposed-back) view;
  - float16, bfloat16 and float64 copies (compared with torch running the
    weights rounded the same way);

and refused with the right SQLSTATE, without running anything:

  - a checkpoint holding an object whose __reduce__ is os.system (0A000, the
    global named; the command's marker file must not appear);
  - a whole pickled model (torch.save(model)), legacy (non-zip) torch.save
    output (0A000);
  - a state_dict with an extra tensor (22000, the tensor named).

Output: "ok: ..." / "FAIL: ..." per check, last line "pth: N passed, M failed".
"""
import os
import shutil
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from medtl_testlib import Report, sql_lit  # noqa: E402
from medtl_testlib import psql as _psql  # noqa: E402
from parity_torch import (build_model, make_image, to_input, torch_forward, rel_err,  # noqa: E402
                          parse_real_array, IMAGENET_MEAN, IMAGENET_STD)

DB = "medtl_pth"
TOL = 1e-4
SEED = 20261126
report = Report("pth")


def psql(sql):
    return _psql(sql, DB)


class Evil:
    """Pickles as os.system(cmd): what a hostile checkpoint does on torch.load."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def try_import(name, path, arch="resnet18"):
    """(sqlstate or 'ok', message) of importing a file."""
    out = psql("SELECT try_import(%s, %s, %s);" % (sql_lit(name), sql_lit(arch), sql_lit(path)))
    s = out[0] if out else "?"
    return (s[:5], s[7:]) if s[:5] != "ok" else ("ok", "")


def logits_of(name, img_path):
    out = psql("SELECT medtl.logits(%s, medtl.read_server_file(%s));" % (sql_lit(name), sql_lit(img_path)))
    return parse_real_array(out[0])


def check_logits(label, name, model, images):
    for img_name, img_path, pixels in images:
        want = torch_forward(model, to_input(pixels, IMAGENET_MEAN, IMAGENET_STD))[0]
        e, detail = rel_err(logits_of(name, img_path), want)
        report(e <= TOL, "%s %s logits: rel err %.3g (%s)" % (label, img_name, e, detail))


def main():
    import copy
    import numpy as np
    import torch
    from PIL import Image

    base = os.environ.get("MEDTL_WORK") or tempfile.mkdtemp(prefix="medtl_pth_")
    work = os.path.join(base, "pth")
    os.makedirs(work, exist_ok=True)
    if not os.environ.get("MEDTL_WORK"):
        os.chmod(base, 0o755)
    os.chmod(work, 0o755)
    marker = os.path.join(work, "PWNED")
    db_created = False

    def save(obj, fname, **kw):
        path = os.path.join(work, fname)
        torch.save(obj, path, **kw)
        os.chmod(path, 0o644)
        return path

    try:
        _psql("DROP DATABASE IF EXISTS %s;" % DB, "postgres")
        _psql("CREATE DATABASE %s;" % DB, "postgres")
        db_created = True
        psql("""CREATE EXTENSION medtl;
CREATE FUNCTION try_import(n text, a text, p text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM medtl.import_model_file(n, a, p, replace => true);
    RETURN 'ok';
EXCEPTION WHEN others THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;""")
        rng = np.random.default_rng(SEED)
        images = []
        for i in range(2):
            pixels = make_image(rng, i)
            path = os.path.join(work, "img%d.png" % i)
            Image.fromarray(pixels, "RGB").save(path)
            os.chmod(path, 0o644)
            images.append(("img%d" % i, path, pixels))
        crng = np.random.default_rng(SEED + 1)
        calib = torch.cat([to_input(make_image(crng, i % 2), IMAGENET_MEAN, IMAGENET_STD) for i in range(4)])
        model = build_model("resnet18", 7, SEED, calib)
        sd = model.state_dict()

        # the plain state_dict
        path = save(sd, "resnet18.pth")
        st, msg = try_import("pth_plain", path)
        report(st == "ok", "torch.save(state_dict) imports: %s %s" % (st, msg))
        info = psql("SELECT medtl.safetensors_info(medtl.read_server_file(%s), 'resnet18')->>'format', "
                    "(SELECT num_classes FROM medtl.models WHERE name = 'pth_plain'), "
                    "(SELECT sha256 FROM medtl.models WHERE name = 'pth_plain');" % sql_lit(path))
        import hashlib
        with open(path, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        report(info == ["pth|7|%s" % sha], "models row: format, classes, sha256 of the file: %s" % info)
        check_logits("plain", "pth_plain", model, images)

        # every other architecture of the zoo, saved by torch.save, scores as in torch
        for arch in ("resnet34", "resnet50", "mobilenet_v2", "densenet121", "efficientnet_b0", "vit_b_16"):
            m = build_model(arch, 5, SEED, calib)
            path = save(m.state_dict(), "%s.pth" % arch)
            st, msg = try_import("pth_" + arch, path, arch)
            report(st == "ok", "%s: torch.save(state_dict) imports: %s %s" % (arch, st, msg))
            if st == "ok":
                check_logits(arch, "pth_" + arch, m, images[:1])
                psql("SELECT medtl.drop_model('pth_%s');" % arch)
            os.unlink(path)
            del m

        # a DataParallel training checkpoint with a non-contiguous tensor
        dp = {"module." + k: v for k, v in sd.items()}
        w = sd["fc.weight"]
        dp["module.fc.weight"] = w.t().contiguous().t()
        assert not dp["module.fc.weight"].is_contiguous() and torch.equal(dp["module.fc.weight"], w)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        ckpt = {"epoch": 5, "arch": "resnet18", "state_dict": dp, "optimizer": opt.state_dict(),
                "best_acc1": torch.tensor(0.5)}
        path = save(ckpt, "checkpoint.pth.tar")
        st, msg = try_import("pth_dp", path)
        report(st == "ok", "checkpoint dict with module. prefix and a transposed view imports: %s %s" % (st, msg))
        check_logits("module.", "pth_dp", model, images)

        # reduced and extended precision: torch runs the same rounded weights
        for dtype, tag in ((torch.float16, "half"), (torch.bfloat16, "bfloat16"), (torch.float64, "double")):
            low = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}
            path = save(low, "resnet18_%s.pth" % tag)
            st, msg = try_import("pth_" + tag, path)
            report(st == "ok", "%s state_dict imports: %s %s" % (tag, st, msg))
            ref = copy.deepcopy(model)
            ref.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in low.items()})
            ref.eval()
            check_logits(tag, "pth_" + tag, ref, images)
            if tag == "half":
                # the rounding matters: medtl's half model is not the float one
                d = rel_err(logits_of("pth_half", images[0][1]),
                            torch_forward(model, to_input(images[0][2], IMAGENET_MEAN, IMAGENET_STD))[0])[0]
                report(d > TOL / 100, "half model differs from the float one by rel %.3g" % d)

        # hostile: os.system in the checkpoint
        path = save({"state_dict": sd, "hook": Evil("touch " + marker)}, "evil.pth")
        st, msg = try_import("pth_evil", path)
        report(st == "0A000" and "system" in msg and "not allowed" in msg,
               "os.system checkpoint refused: %s %s" % (st, msg))
        report(not os.path.exists(marker), "nothing ran (no %s)" % marker)
        # a whole pickled model
        path = save(model, "model.pth")
        st, msg = try_import("pth_model", path)
        report(st == "0A000" and "torchvision.models.resnet.ResNet" in msg,
               "torch.save(model) refused: %s %s" % (st, msg))
        # legacy format
        path = save(sd, "legacy.pth", _use_new_zipfile_serialization=False)
        st, msg = try_import("pth_legacy", path)
        report(st == "0A000" and "legacy" in msg, "legacy torch.save format refused: %s %s" % (st, msg))
        # an extra tensor
        extra = dict(sd)
        extra["extra.weight"] = torch.zeros(3)
        path = save(extra, "extra.pth")
        st, msg = try_import("pth_extra", path)
        report(st == "22000" and "extra.weight" in msg, "unexpected tensor named: %s %s" % (st, msg))
        n = psql("SELECT count(*) FROM medtl.models WHERE name IN ('pth_evil', 'pth_model', 'pth_legacy', 'pth_extra');")
        report(n == ["0"], "refused files registered nothing: %s" % n)
    except Exception:
        report(False, "exception\n%s" % traceback.format_exc().rstrip())
    finally:
        if db_created:
            try:
                _psql("DROP DATABASE IF EXISTS %s;" % DB, "postgres")
            except Exception as e:
                print("warning: could not drop database %s: %s" % (DB, e), flush=True)
        if "--keep" not in sys.argv:
            shutil.rmtree(work, ignore_errors=True)
    report.finish()


if __name__ == "__main__":
    main()
