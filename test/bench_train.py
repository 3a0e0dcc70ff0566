#!/usr/bin/env python3
"""Train and evaluate from SQL on the shared medical data sets and print the
test metrics next to the targets and published baselines.  A benchmark, not a
test: a full run takes hours on 2 cores.  Run through `sudo test/run
bench-train [options]` (which starts the cluster) or with PGHOST/PGPORT/PGUSER
set and MEDTL_SHARED pointing at ../shared.

Each data set is trained with the one-call recipe and its defaults only:
`medtl.fine_tune(model, source)` on the train split (MedMNIST: train + val),
then `medtl.evaluate` on the untouched test split.  `--scratch` adds the
transfer-vs-scratch comparison on 500 training images per class of
chest_xray: the pretrained backbone and the same architecture from random
initialisation, each trained with `medtl.fine_tune`'s defaults (the same
schedule; batch norm resolves to frozen for the pretrained model and to
batch statistics for the one from scratch).

Options: --datasets a,b,c  --limit N (images per class and split, for a quick
smoke run)  --scratch  --csv PATH  --seeds 42,1,2 (one run per seed, then the
mean)  --options "epochs => 10" (extra fine_tune arguments).
"""
import argparse
import csv
import datetime
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from medtl_testlib import psql as _psql, sql_lit  # noqa: E402

DB = "medtl_bench_train"
SHARED = os.environ.get("MEDTL_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "shared"))

# data set -> (which splits train, targets (auc, acc), published baseline text)
DATASETS = {
    "chest_xray": (("train",), (0.97, 0.92),
                   "Kermany et al. 2018: accuracy 0.928 (full resolution; unconfirmed)"),
    "pneumoniamnist": (("train", "val"), (0.965, 0.89),
                       "MedMNIST v2 ResNet-50 (224): AUC 0.962, ACC 0.884"),
    "breastmnist": (("train", "val"), (0.91, 0.87),
                    "MedMNIST v2 ResNet-18 (28): AUC 0.901, ACC 0.863"),
}


def psql(sql):
    return _psql(sql, DB)


def load(name, limit):
    folder = os.path.join(os.path.abspath(SHARED), "data", name) + "/"
    table = "data_" + name
    psql("""DROP TABLE IF EXISTS m_%(t)s; CREATE TABLE m_%(t)s (line text);
            COPY m_%(t)s FROM %(f)s WITH (FORMAT text, HEADER);""" % {"t": table, "f": sql_lit(folder + "manifest.csv")})
    # chest_xray: path,label,split,...; MedMNIST: path,label,label_index,split
    psql("""DROP TABLE IF EXISTS %(t)s;
            CREATE TABLE %(t)s AS
            SELECT path, label, split, medtl.read_server_file(%(dir)s || path) AS image
              FROM (SELECT path, label, split,
                           row_number() OVER (PARTITION BY split, label ORDER BY md5(path)) AS k
                      FROM (SELECT f[1] AS path, f[2] AS label,
                                   CASE WHEN f[3] ~ '^[0-9]+$' THEN f[4] ELSE f[3] END AS split
                              FROM (SELECT string_to_array(line, ',') AS f FROM m_%(t)s) l) p) s
             WHERE %(lim)s;""" % {"t": table, "dir": sql_lit(folder),
                                  "lim": "k <= %d" % limit if limit else "true"})
    rows = psql("SELECT split, label, count(*) FROM %s GROUP BY 1, 2 ORDER BY 1, 2;" % table)
    return table, rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default="chest_xray,pneumoniamnist,breastmnist")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--scratch", action="store_true")
    ap.add_argument("--csv")
    ap.add_argument("--seeds", default="",
                    help="comma-separated seeds: one run per seed (create_model and fine_tune seed), "
                         "then the mean; default one run at fine_tune's own seed")
    ap.add_argument("--options", default="",
                    help="extra fine_tune arguments, e.g. \"epochs => 10\" (then not the defaults)")
    args = ap.parse_args()

    _psql("DROP DATABASE IF EXISTS %s;" % DB, "postgres")
    _psql("CREATE DATABASE %s;" % DB, "postgres")
    psql("CREATE EXTENSION medtl;")
    mdir = os.path.join(os.path.abspath(SHARED), "models", "mobilenet_v2_imagenet") + "/"
    psql("""SELECT medtl.import_model_file('mnv2', 'mobilenet_v2', %s,
              labels => string_to_array(rtrim(convert_from(medtl.read_server_file(%s), 'UTF8'), E'\\n'), E'\\n'),
              padding => 'tf_same');""" % (sql_lit(mdir + "mobilenet_v2_imagenet.safetensors"),
                                           sql_lit(mdir + "labels.txt")))
    print("runtime:", psql("SELECT medtl.runtime_info();")[0], flush=True)
    results = []
    for name in [n for n in args.datasets.split(",") if n]:
        splits, (auc_t, acc_t), baseline = DATASETS[name]
        table, counts = load(name, args.limit)
        print("\n== %s: %s" % (name, "; ".join(c.replace("|", " ") for c in counts)), flush=True)
        labels = psql("SELECT array_agg(DISTINCT label ORDER BY label) FROM %s;" % table)[0]
        src = "SELECT image, label FROM %s WHERE split IN (%s)" % (table, ", ".join("'%s'" % s for s in splits))
        what = "fine_tune " + (args.options if args.options else "defaults")
        seeds = [int(x) for x in args.seeds.split(",") if x] or [None]
        per_seed = []
        for seed in seeds:
            sd = "" if seed is None else ", seed => %d" % seed
            psql("SELECT medtl.create_model(%s, 'mnv2', %s::text[], replace => true%s);"
                 % (sql_lit(name), sql_lit(labels), sd))
            t0 = time.time()
            run = psql("SELECT medtl.fine_tune(%s, %s%s%s);" % (sql_lit(name), sql_lit(src), sd,
                                                             ", " + args.options if args.options else ""))[0]
            t_train = time.time() - t0
            t0 = time.time()
            ev = psql("SELECT medtl.evaluate(%s, %s);" % (
                sql_lit(name), sql_lit("SELECT image, label FROM %s WHERE split = 'test'" % table)))[0]
            t_eval = time.time() - t0
            acc, auc, n, pos = psql("SELECT accuracy, auc, n, positive_label FROM medtl.evaluations "
                                    "WHERE evaluation_id = %s;" % ev)[0].split("|")
            acc, auc = float(acc), float(auc)
            ok = auc >= auc_t and acc >= acc_t
            print("%s%s: test n=%s accuracy %.4f (target %.3f), AUC %.4f (target %.3f) -> %s; train %.0f s, "
                  "evaluate %.0f s; run %s; baseline: %s"
                  % (name, "" if seed is None else " seed %d" % seed, n, acc, acc_t, auc, auc_t,
                     "met" if ok else "NOT met", t_train, t_eval, run, baseline), flush=True)
            results.append((name, what + ("" if seed is None else " seed %d" % seed), n, acc, auc, t_train))
            per_seed.append((acc, auc))
        if len(per_seed) > 1:
            m_acc = sum(a for a, _ in per_seed) / len(per_seed)
            m_auc = sum(u for _, u in per_seed) / len(per_seed)
            print("%s: mean over %d seeds: accuracy %.4f, AUC %.4f -> %s" % (
                name, len(per_seed), m_acc, m_auc, "met" if m_auc >= auc_t and m_acc >= acc_t else "NOT met"),
                flush=True)

    if args.scratch:
        table, _ = load("chest_xray", args.limit or 500)
        labels = "{normal,pneumonia}"
        src = "SELECT image, label FROM %s WHERE split = 'train'" % table
        for model, pretrained in (("transfer", "true"), ("scratch", "false")):
            psql("SELECT medtl.create_model(%s, %s, %s::text[], pretrained => %s, replace => true);"
                 % (sql_lit(model), sql_lit("mnv2" if pretrained == "true" else "mobilenet_v2"),
                    sql_lit(labels), pretrained))
            t0 = time.time()
            psql("SELECT medtl.fine_tune(%s, %s);" % (sql_lit(model), sql_lit(src)))
            t_train = time.time() - t0
            ev = psql("SELECT medtl.evaluate(%s, %s);" % (
                sql_lit(model), sql_lit("SELECT image, label FROM %s WHERE split = 'test'" % table)))[0]
            acc, auc, n = psql("SELECT accuracy, auc, n FROM medtl.evaluations WHERE evaluation_id = %s;" % ev)[0].split("|")
            print("%s (chest_xray, %d/class train): test accuracy %.4f AUC %.4f, train %.0f s"
                  % (model, args.limit or 500, float(acc), float(auc), t_train), flush=True)
            results.append(("chest_xray", model, n, float(acc), float(auc), t_train))

    if args.csv:
        new = not os.path.exists(args.csv)
        with open(args.csv, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["timestamp", "dataset", "what", "n_test", "accuracy", "auc", "train_seconds"])
            for r in results:
                w.writerow([datetime.datetime.now().isoformat(timespec="seconds")] + list(r))


if __name__ == "__main__":
    main()
