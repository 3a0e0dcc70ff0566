#!/usr/bin/python3
"""medtl's Dice and IoU against numpy on real Kvasir-SEG masks (run by test/run).

Takes the first 36 masks of ../shared/data/kvasir_seg (MEDTL_SHARED), makes
variants of each with numpy (eroded, shifted, the same mask stored as 0/1, a
three-class version) written as PNG with PIL, and compares

  - medtl.mask_pixels with PIL's decoding of the shipped masks (exact);
  - medtl.dice / medtl.iou per pair with numpy's counts (exact: the same
    division of the same integers), for (mask_i, mask_i+1), (mask_i, eroded
    mask_i), (mask_i, shifted mask_i), (mask_i, mask_i as 0/1), per class on
    three-class masks, and the empty cases;
  - medtl.mean_dice / pooled_dice / mean_iou / pooled_iou with GROUP BY, with
    numpy's mean of per-pair values and its pooled counts (within 1e-12).

Output: "ok: ..." / "FAIL: ..." lines, last line "mask_metrics: N passed, M failed".
"""
import csv
import os
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from medtl_testlib import Report, sql_lit  # noqa: E402
from medtl_testlib import psql as _psql  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DB = "medtl_masks"
N = 36
report = Report("mask_metrics")


def psql(sql):
    return _psql(sql, DB)


def counts(a, b, cls=None):
    """|A∩B|, |A|, |B| with foreground nonzero, or == cls."""
    fa = (a != 0) if cls is None else (a == cls)
    fb = (b != 0) if cls is None else (b == cls)
    return int((fa & fb).sum()), int(fa.sum()), int(fb.sum())


def dice_iou(a, b, cls=None, empty=1.0):
    i, p, t = counts(a, b, cls)
    d = empty if p + t == 0 else 2.0 * i / (p + t)
    u = empty if p + t - i == 0 else i / (p + t - i)
    return d, u


def erode(fg, steps):
    """Binary erosion with a 3x3 cross, steps times (pixels off the edge are background)."""
    import numpy as np
    m = fg.copy()
    for _ in range(steps):
        p = np.pad(m, 1)
        m = m & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m


def shift(a, dy, dx):
    """a moved by (dy, dx), zero-filled."""
    import numpy as np
    out = np.zeros_like(a)
    h, w = a.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        a[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def main():
    import numpy as np
    from PIL import Image

    shared = os.environ.get("MEDTL_SHARED") or os.path.join(ROOT, "..", "shared")
    kvasir = os.path.join(shared, "data", "kvasir_seg")
    with open(os.path.join(kvasir, "manifest.csv"), newline="") as f:
        paths = sorted(os.path.join(kvasir, r["mask"]) for r in csv.DictReader(f))[:N]
    base = os.environ.get("MEDTL_WORK") or tempfile.mkdtemp(prefix="medtl_masks_")
    work = os.path.join(base, "masks")
    os.makedirs(work, exist_ok=True)
    os.chmod(base, 0o755)
    os.chmod(work, 0o755)

    masks = {}                                   # name -> (path, array as medtl should read it)
    for k, p in enumerate(paths):
        a = np.array(Image.open(p))
        masks["m%d" % k] = (p, a)
    sizes = {a.shape for _, a in masks.values()}
    report(len(sizes) == 1, "the %d shipped masks share one size %s" % (N, sorted(sizes)))
    h, w = next(iter(sizes))

    def save(name, arr):
        path = os.path.join(work, name + ".png")
        Image.fromarray(arr.astype(np.uint8), "L").save(path)
        os.chmod(path, 0o644)
        masks[name] = (path, arr.astype(np.uint8))

    for k in range(N):
        a = masks["m%d" % k][1]
        fg = a != 0
        save("e%d" % k, erode(fg, 4) * 255)                       # eroded
        save("s%d" % k, shift(a, 7, -5))                          # shifted
        save("b%d" % k, fg.astype(np.uint8))                      # same mask stored 0/1
        three = fg.astype(np.uint8)                               # classes: 0 background,
        three[erode(fg, 6)] = 2                                   # 1 rim, 2 core
        save("c%d" % k, three)
        t2 = shift(three, -4, 6)
        save("d%d" % k, t2)
    save("z", np.zeros((h, w), np.uint8))                         # empty

    pairs = []                                   # (group, a, b, class)
    for k in range(N):
        pairs.append(("other", "m%d" % k, "m%d" % ((k + 1) % N), None))
        pairs.append(("eroded", "m%d" % k, "e%d" % k, None))
        pairs.append(("shifted", "s%d" % k, "m%d" % k, None))
        pairs.append(("zero_one", "m%d" % k, "b%d" % k, None))
        for cls in (0, 1, 2):
            pairs.append(("class%d" % cls, "c%d" % k, "d%d" % k, cls))
    pairs += [("empty", "z", "z", None), ("empty", "z", "m0", None), ("empty", "m1", "z", None),
              ("empty", "e2", "m2", None)]

    _psql("DROP DATABASE IF EXISTS %s;" % DB, "postgres")
    _psql("CREATE DATABASE %s;" % DB, "postgres")
    try:
        psql("CREATE EXTENSION medtl;")
        psql("CREATE TABLE masks AS SELECT name, medtl.read_server_file(path) AS m FROM (VALUES %s) v(name, path);"
             % ", ".join("(%s, %s)" % (sql_lit(n), sql_lit(p)) for n, (p, _) in sorted(masks.items())))
        psql("CREATE TABLE pairs (pid int, grp text, a text, b text, cls int);"
             "INSERT INTO pairs VALUES %s;"
             % ", ".join("(%d, %s, %s, %s, %s)" % (i, sql_lit(g), sql_lit(a), sql_lit(b),
                                                   "NULL" if c is None else c)
                         for i, (g, a, b, c) in enumerate(pairs)))
        psql("CREATE VIEW v AS SELECT p.*, x.m AS pm, y.m AS tm FROM pairs p "
             "JOIN masks x ON x.name = p.a JOIN masks y ON y.name = p.b;")

        # decoding: medtl reads the shipped PNGs as PIL does
        same = 0
        for k in range(N):
            row = psql("SELECT array_to_string(medtl.mask_pixels(m), ',') FROM masks WHERE name = 'm%d';" % k)[0]
            got = np.array([int(v) for v in row.split(",")], np.uint8).reshape(h, w)
            same += bool((got == masks["m%d" % k][1]).all())
        report(same == N, "mask_pixels equals PIL's decoding for %d of %d shipped masks" % (same, N))
        vals = set()
        for _, a in (masks["m%d" % k] for k in range(N)):
            vals |= set(np.unique(a).tolist())
        report(vals <= {0, 255}, "shipped masks hold only 0 and 255 (%s)" % sorted(vals))

        # per pair: exact
        rows = psql("SELECT pid, medtl.dice(pm, tm, class => cls), medtl.iou(pm, tm, class => cls) FROM v ORDER BY pid;")
        got = {int(r.split("|")[0]): (float(r.split("|")[1]), float(r.split("|")[2])) for r in rows}
        want = {i: dice_iou(masks[a][1], masks[b][1], c) for i, (_, a, b, c) in enumerate(pairs)}
        groups = sorted({g for g, _, _, _ in pairs})
        for g in groups:
            ids = [i for i, p in enumerate(pairs) if p[0] == g]
            bad = [i for i in ids if got[i] != want[i]]
            lo = min(want[i][0] for i in ids)
            hi = max(want[i][0] for i in ids)
            report(not bad, "%s: dice and iou of %d pairs equal numpy's exactly (dice %.4f..%.4f)%s"
                   % (g, len(ids), lo, hi, "" if not bad else "; differ: %s" % [(pairs[i], got[i], want[i]) for i in bad[:3]]))
        report(want[next(i for i, p in enumerate(pairs) if p[0] == "zero_one")] == (1.0, 1.0),
               "a mask against itself stored as 0/1 has dice 1")

        # empty-pair variants
        ez = next(i for i, p in enumerate(pairs) if p[1] == "z" and p[2] == "z")
        r = psql("SELECT medtl.dice(pm, tm, 0.25), medtl.iou(pm, tm, NULL) IS NULL FROM v WHERE pid = %d;" % ez)[0]
        report(r == "0.25|t", "both empty: empty_value 0.25 and NULL (%s)" % r)

        # aggregates with GROUP BY: mean of per-pair values and pooled counts
        rows = psql("SELECT grp, medtl.mean_dice(pm, tm, 1.0, cls), medtl.pooled_dice(pm, tm, 1.0, cls), "
                    "medtl.mean_iou(pm, tm, 1.0, cls), medtl.pooled_iou(pm, tm, 1.0, cls) "
                    "FROM v GROUP BY grp ORDER BY grp;")
        worst = 0.0
        for r in rows:
            f = r.split("|")
            g = f[0]
            ids = [i for i, p in enumerate(pairs) if p[0] == g]
            cnt = np.array([counts(masks[pairs[i][1]][1], masks[pairs[i][2]][1], pairs[i][3]) for i in ids])
            si, sp, st = (int(x) for x in cnt.sum(0))
            md = float(np.mean([want[i][0] for i in ids]))
            mi = float(np.mean([want[i][1] for i in ids]))
            pd = 1.0 if sp + st == 0 else 2.0 * si / (sp + st)
            pi = 1.0 if sp + st - si == 0 else si / (sp + st - si)
            diffs = [abs(float(f[1]) - md), abs(float(f[2]) - pd), abs(float(f[3]) - mi), abs(float(f[4]) - pi)]
            worst = max(worst, max(diffs))
            report(max(diffs) <= 1e-12,
                   "%s: mean dice %.6f, pooled dice %.6f, mean iou %.6f, pooled iou %.6f match numpy (max diff %.1e)"
                   % (g, md, pd, mi, pi, max(diffs)))
        # over all rows at once, with empty pairs skipped (empty_value NULL)
        r = psql("SELECT medtl.mean_dice(pm, tm, NULL, cls), medtl.pooled_iou(pm, tm, NULL, cls) FROM v;")[0].split("|")
        vals = [dice_iou(masks[a][1], masks[b][1], c, None)[0] for _, a, b, c in pairs]
        md = float(np.mean([v for v in vals if v is not None]))
        cnt = np.array([counts(masks[a][1], masks[b][1], c) for _, a, b, c in pairs]).sum(0)
        pi = cnt[0] / (cnt[1] + cnt[2] - cnt[0])
        report(abs(float(r[0]) - md) <= 1e-12 and abs(float(r[1]) - pi) <= 1e-12,
               "all %d pairs, empty pairs skipped: mean dice %.6f, pooled iou %.6f" % (len(pairs), md, pi))
    except Exception:
        traceback.print_exc()
        report(False, "mask metrics test raised")
    finally:
        try:
            _psql("DROP DATABASE IF EXISTS %s;" % DB, "postgres")
        except Exception:
            pass
    report.finish()


if __name__ == "__main__":
    main()
