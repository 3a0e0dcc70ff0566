#!/usr/bin/env python3
"""Segmentation benchmark: a U-Net on the pretrained MobileNetV2 encoder
fine-tuned from SQL on Kvasir-SEG (../shared/data/kvasir_seg, train 880 /
test 118), evaluated on the untouched test split; prints mean Dice, IoU,
pooled Dice, pixel accuracy and training time next to the target (mean Dice
>= 0.80, IoU >= 0.70; ResUNet++ reported Dice about 0.81 on Kvasir-SEG, on a
different split).  `--scratch` trains the same U-Net from random
initialisation on the same schedule for the transfer-vs-scratch comparison.

Run through `sudo test/run bench-seg [options]` (which starts a cluster), or
with PGHOST/PGPORT/PGUSER set and MEDTL_SHARED pointing at ../shared.

Options: --epochs N (phase 2; default 20)  --head-epochs N (default 5)
--input-size N (multiple of 32; default 224)  --batch-size N (default 8)
--limit N (training pairs, for a quick smoke run)  --scratch  --csv PATH.
"""
import argparse
import csv
import datetime
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from medtl_testlib import psql as _psql, sql_lit  # noqa: E402

DB = "medtl_bench_seg"
SHARED = os.environ.get("MEDTL_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
TARGET_DICE, TARGET_IOU = 0.80, 0.70


def psql(sql):
    return _psql(sql, DB)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--head-epochs", type=int, default=5)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--scratch", action="store_true")
    ap.add_argument("--csv")
    args = ap.parse_args()

    _psql("DROP DATABASE IF EXISTS %s;" % DB, "postgres")
    _psql("CREATE DATABASE %s;" % DB, "postgres")
    psql("CREATE EXTENSION medtl;")
    mdir = os.path.join(os.path.abspath(SHARED), "models", "mobilenet_v2_imagenet") + "/"
    psql("SELECT medtl.import_model_file('mnv2', 'mobilenet_v2', %s, padding => 'tf_same');"
         % sql_lit(mdir + "mobilenet_v2_imagenet.safetensors"))
    kv = os.path.join(os.path.abspath(SHARED), "data", "kvasir_seg") + "/"
    psql("""CREATE TABLE kv_manifest (image text, mask text, split text);
            COPY kv_manifest FROM %(m)s WITH (FORMAT csv, HEADER);
            CREATE TABLE kv AS
            SELECT split, image AS path, medtl.read_server_file(%(d)s || image) AS image,
                   medtl.read_server_file(%(d)s || mask) AS mask
              FROM (SELECT *, row_number() OVER (PARTITION BY split ORDER BY md5(image)) AS k
                      FROM kv_manifest) m
             WHERE split = 'test' OR %(lim)s;"""
         % {"m": sql_lit(kv + "manifest.csv"), "d": sql_lit(kv),
            "lim": "k <= %d" % args.limit if args.limit else "true"})
    print("runtime:", psql("SELECT medtl.runtime_info();")[0], flush=True)
    print("pairs:", "; ".join(r.replace("|", " ") for r in
                              psql("SELECT split, count(*) FROM kv GROUP BY 1 ORDER BY 1;")), flush=True)
    train_src = "SELECT image, mask FROM kv WHERE split = 'train'"
    test_src = "SELECT image, mask FROM kv WHERE split = 'test'"
    results = []
    for model, pretrained in (("polyp", True),) + ((("polyp_scratch", False),) if args.scratch else ()):
        psql("SELECT medtl.create_model(%s, %s, ARRAY['background', 'polyp'], task => 'segmentation', "
             "pretrained => %s, input_size => %d, replace => true);"
             % (sql_lit(model), sql_lit("mnv2" if pretrained else "mobilenet_v2"),
                "true" if pretrained else "false", args.input_size))
        call = ("SELECT medtl.fine_tune(%s, %s, head_epochs => %d, epochs => %d, batch_size => %d);"
                % (sql_lit(model), sql_lit(train_src), args.head_epochs, args.epochs, args.batch_size))
        print("\n==", call, flush=True)
        t0 = time.time()
        run = psql(call)[0]
        t_train = time.time() - t0
        for line in psql("SELECT phase, epoch, round(train_loss::numeric, 4), round(val_loss::numeric, 4), "
                         "round(val_dice::numeric, 4), round(seconds::numeric, 1) FROM medtl.epochs "
                         "WHERE run_id = %s ORDER BY phase, epoch;" % run):
            p, e, tl, vl, vd, s = line.split("|")
            print("  phase %s epoch %2s: train loss %s | val loss %s dice %s | %s s" % (p, e, tl, vl, vd, s))
        t0 = time.time()
        ev = psql("SELECT medtl.evaluate(%s, %s);" % (sql_lit(model), sql_lit(test_src)))[0]
        t_eval = time.time() - t0
        n, dice, iou, f1, acc, rec, spec = psql(
            "SELECT n, dice, iou, f1, accuracy, recall, specificity FROM medtl.evaluations "
            "WHERE evaluation_id = %s;" % ev)[0].split("|")
        dice, iou = float(dice), float(iou)
        ok = dice >= TARGET_DICE and iou >= TARGET_IOU
        print("%s (%s): test n=%s mean Dice %.4f (target %.2f), IoU %.4f (target %.2f) -> %s; pooled Dice %.4f, "
              "pixel accuracy %.4f, sensitivity %.4f, specificity %.4f; train %.0f s, evaluate %.0f s; run %s"
              % (model, "pretrained encoder" if pretrained else "from scratch", n, dice, TARGET_DICE, iou,
                 TARGET_IOU, "met" if ok else "NOT met", float(f1), float(acc), float(rec), float(spec),
                 t_train, t_eval, run), flush=True)
        results.append((model, pretrained, args.input_size, args.head_epochs, args.epochs, n, dice, iou, t_train))
    print("\nreproduce: sudo test/run bench-seg %s" % " ".join(sys.argv[1:]))
    if args.csv:
        new = not os.path.exists(args.csv)
        with open(args.csv, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["timestamp", "model", "pretrained", "input_size", "head_epochs", "epochs",
                            "n_test", "mean_dice", "mean_iou", "train_seconds"])
            for r in results:
                w.writerow([datetime.datetime.now().isoformat(timespec="seconds")] + list(r))


if __name__ == "__main__":
    main()
