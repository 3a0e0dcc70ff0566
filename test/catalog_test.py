#!/usr/bin/python3
"""models/fetch.sh and models/verify.sh on local files (run by test/run).

No internet is needed: a seeded torchvision mobilenet_v2 (3 classes) is
written with torch.save, a temporary catalogue (MEDTL_CATALOG) points at it
with file:// URLs, and fetch.sh must

  - import it when the sha256 (full, or an 8-digit prefix as the torchvision
    rows hold) matches, giving the same logits as torch within 1e-4 and the
    file's sha256 in medtl.models;
  - refuse it, registering nothing, when the sha256 or the prefix is wrong;
  - fail with a clear message when the URL cannot be downloaded;
  - reject an unknown catalogue name.

The real catalogue is checked for form: every torchvision row has an https
URL on download.pytorch.org ending in its file name, and its sha256 prefix is
the hex torchvision put in that file name.

Output: "ok: ..." / "FAIL: ..." lines, last line "catalog: N passed, M failed".
"""
import csv
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from medtl_testlib import Report, sql_lit  # noqa: E402
from medtl_testlib import psql as _psql  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FETCH = os.path.join(ROOT, "models", "fetch.sh")
VERIFY = os.path.join(ROOT, "models", "verify.sh")
CATALOG = os.path.join(ROOT, "models", "catalog.csv")
DB = "medtl_catalog"
report = Report("catalog")


def run(args, env):
    r = subprocess.run(args, capture_output=True, text=True, env=env)
    return r.returncode, (r.stdout + r.stderr).strip()


def check_real_catalog():
    with open(CATALOG, newline="") as f:
        text = f.read()
    rows = list(csv.DictReader(text.splitlines()))
    report(all("," not in v for r in rows for v in r.values() if v),
           "catalog.csv has no commas inside fields (the scripts split on ',')")
    want = {"resnet18", "resnet34", "resnet50", "densenet121", "efficientnet_b0", "mobilenet_v2", "vit_b_16"}
    tv = [r for r in rows if r["url"]]
    report(want <= {r["arch"] for r in tv}, "torchvision rows for %s" % sorted(want))
    for r in tv:
        m = re.search(r"-([0-9a-f]+)\.pth$", r["file"])
        ok = (m is not None and r["url"] == "https://download.pytorch.org/models/" + r["file"]
              and (r["sha256"] == m.group(1) or (len(r["sha256"]) == 64 and r["sha256"].startswith(m.group(1)))
                   # torchvision's efficientnet_b0 keeps the tag of the timm file it was
                   # converted from; its own digest is recorded in full (models/README.md)
                   or (r["arch"] == "efficientnet_b0" and re.fullmatch(r"[0-9a-f]{64}", r["sha256"]) is not None))
              and r["license"] == "BSD-3-Clause" and r["input_size"] == "224" and r["num_classes"] == "1000")
        report(ok, "%s: %s, sha256 %s (%s)" % (r["name"], r["url"], r["sha256"],
                                                "full" if len(r["sha256"]) == 64 else "the file name's tag"))


def main():
    import numpy as np
    import torch
    from PIL import Image
    from parity_torch import (build_model, make_image, to_input, torch_forward, rel_err, parse_real_array,
                              IMAGENET_MEAN, IMAGENET_STD)

    check_real_catalog()
    base = os.environ.get("MEDTL_WORK") or tempfile.mkdtemp(prefix="medtl_catalog_")
    work = os.path.join(base, "catalog")
    os.makedirs(work, exist_ok=True)
    if not os.environ.get("MEDTL_WORK"):
        os.chmod(base, 0o755)
    os.chmod(work, 0o755)
    db_created = False
    try:
        _psql("DROP DATABASE IF EXISTS %s;" % DB, "postgres")
        _psql("CREATE DATABASE %s;" % DB, "postgres")
        db_created = True
        _psql("CREATE EXTENSION medtl;", DB)

        crng = np.random.default_rng(11)
        calib = torch.cat([to_input(make_image(crng, i), IMAGENET_MEAN, IMAGENET_STD) for i in range(2)])
        model = build_model("mobilenet_v2", 3, 7, calib)    # batch-norm statistics that matter
        src = os.path.join(work, "tiny-src.pth")
        torch.save(model.state_dict(), src)
        os.chmod(src, 0o644)
        with open(src, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        bad = sha[:-1] + ("0" if sha[-1] != "0" else "1")
        badprefix = ("0" if sha[0] != "0" else "1") + sha[1:8]
        url = "file://" + src
        rows = [
            ("tiny_full", sha, url), ("tiny_prefix", sha[:8], url), ("tiny_bad", bad, url),
            ("tiny_badprefix", badprefix, url), ("tiny_offline", sha, "https://127.0.0.1:9/tiny.pth"),
        ]
        cat = os.path.join(work, "catalog.csv")
        with open(cat, "w") as f:
            f.write("name,arch,file,sha256,source,license,mean,std,input_size,padding,num_classes,url\n")
            for name, s, u in rows:
                f.write("%s,mobilenet_v2,%s.pth,%s,test,BSD-3-Clause,0.485 0.456 0.406,0.229 0.224 0.225,"
                        "224,symmetric,3,%s\n" % (name, name, s, u))
        labels = os.path.join(work, "labels.txt")
        with open(labels, "w") as f:
            f.write("cat\ndog\nit's a bird\n")
        env = dict(os.environ, MEDTL_CATALOG=cat, PGDATABASE=DB, PSQL="/usr/lib/postgresql/15/bin/psql")
        dest = os.path.join(work, "dl")

        rc, out = run([FETCH, "tiny_full", "--dest", dest, "--labels", labels], env)
        report(rc == 0 and "registered" in out, "full sha256 matches: imported (rc %d): %s" % (rc, out[-300:]))
        row = _psql("SELECT sha256, num_classes, labels[3], mean FROM medtl.models WHERE name = 'tiny_full';", DB)
        report(row == ["%s|3|it's a bird|{0.485,0.456,0.406}" % sha], "models row: %s" % row)
        img = os.path.join(work, "img.png")
        pixels = make_image(np.random.default_rng(3), 0)
        Image.fromarray(pixels, "RGB").save(img)
        os.chmod(img, 0o644)
        got = parse_real_array(_psql("SELECT medtl.logits('tiny_full', medtl.read_server_file(%s));" % sql_lit(img), DB)[0])
        e, detail = rel_err(got, torch_forward(model, to_input(pixels, IMAGENET_MEAN, IMAGENET_STD))[0])
        report(e <= 1e-4, "imported model's logits vs torch: rel err %.3g (%s)" % (e, detail))

        rc, out = run([FETCH, "tiny_prefix", "--dest", dest], env)
        report(rc == 0 and "prefix" in out and "registered" in out,
               "8-digit sha256 prefix matches: imported with a warning (rc %d): %s" % (rc, out[-300:]))
        for name in ("tiny_bad", "tiny_badprefix"):
            rc, out = run([FETCH, name, "--dest", dest], env)
            report(rc != 0 and "does not match" in out and not os.path.exists(os.path.join(dest, name + ".pth")),
                   "%s refused (rc %d): %s" % (name, rc, out[-300:]))
        rc, out = run([FETCH, "tiny_offline", "--dest", dest], env)
        report(rc != 0 and ("could not download" in out or "neither curl nor wget" in out) and "--from" in out,
               "unreachable URL: clear failure (rc %d): %s" % (rc, out[-300:]))
        # --from a local path rescues the offline row
        rc, out = run([FETCH, "tiny_offline", "--dest", dest, "--from", src], env)
        report(rc == 0 and "registered" in out, "--from a local file (rc %d): %s" % (rc, out[-200:]))
        rc, out = run([FETCH, "no_such_backbone"], env)
        report(rc == 2 and "no backbone" in out, "unknown name (rc %d): %s" % (rc, out.splitlines()[0] if out else ""))
        n = _psql("SELECT string_agg(name, ',' ORDER BY name) FROM medtl.models;", DB)
        report(n == ["tiny_full,tiny_offline,tiny_prefix"], "registered exactly the matching files: %s" % n)
        # verify.sh against the real catalogue: this file is not resnet18's
        rc, out = run([VERIFY, "resnet18_imagenet1k_v1", src], dict(os.environ))
        report(rc == 1 and "f37072fd" in out, "verify.sh refuses a file that is not resnet18-f37072fd.pth (rc %d)" % rc)
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
