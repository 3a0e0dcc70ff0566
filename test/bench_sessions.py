#!/usr/bin/python3
"""Benchmark (not a test): backends that score at the same time.
Run through `test/run bench-sessions [options]` (which sets PGHOST, PGPORT,
PGUSER, PGDATABASE and MEDTL_SHARED) with Debian's /usr/bin/python3.
Imports the pretrained MobileNetV2 from $MEDTL_SHARED/models and loads the
624 chest_xray test JPEGs into a table, as bench_predict.py does.  Then, for
each thread setting (medtl.threads = 0, the default, under which scoring
adapts its count to the load; = the core count, scoring's count before it
adapted; = 1), it times `SELECT count(medtl.predict('m', image)) FROM xrays`
(no parallel workers) in one session alone, and in --sessions sessions at
once: each session scores the table once untimed (model load, warm-up),
waits until all have, then scores it --passes times, timed in psql.
Prints each session's seconds a pass, the machine's images/s, the ratio of
each setting's figures to the default's measured in the same run, and what
the default chose (runtime_info's last_scoring_threads, probes and moves).
Options: --sessions N (default 2), --passes N (default 2), --limit N
(first N images), --batch N (score with medtl.predict_batch over the table's
images in batches of N instead), --keep-db.
"""
import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from medtl_testlib import psql as _psql, sql_lit  # noqa: E402

PSQL = "/usr/lib/postgresql/15/bin/psql"
DB = "medtl_bench_sessions"


def psql(sql, db=DB):
    return _psql(sql, db)


def query(batch):
    if batch:
        return ("SELECT count(*) FROM medtl.predict_batch('m', ARRAY(SELECT image FROM xrays ORDER BY id), %d);\n"
                % batch)
    return "SELECT count(medtl.predict('m', image)) FROM xrays;\n"


def session_script(setting, passes, ready, go, batch):
    q = query(batch)
    return ("SET max_parallel_workers_per_gather = 0;\nSET medtl.threads = %d;\n" % setting + q +
            "\\! touch %s\n" % ready +
            "\\! while [ ! -e %s ]; do sleep 0.005; done\n" % go +
            "\\timing on\n" + q * passes + "\\timing off\n"
            "SELECT medtl.runtime_info()::json->>'last_scoring_threads', "
            "medtl.runtime_info()::json->>'scoring_thread_probes', "
            "medtl.runtime_info()::json->>'scoring_thread_moves';\n")


def run_sessions(k, setting, passes, tmp, batch):
    """k sessions at once; returns [(seconds per pass, [passes]), ...] and their choices."""
    go = os.path.join(tmp, "go")
    if os.path.exists(go):
        os.unlink(go)
    procs = []
    for i in range(k):
        ready = os.path.join(tmp, "ready%d" % i)
        if os.path.exists(ready):
            os.unlink(ready)
        p = subprocess.Popen([PSQL, "-X", "-At", "-q", "-v", "ON_ERROR_STOP=1", "-d", DB, "-f", "-"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        p.stdin.write(session_script(setting, passes, ready, go, batch))
        p.stdin.close()
        procs.append((p, ready))
    deadline = time.time() + 600
    while not all(os.path.exists(r) for _, r in procs):
        if time.time() > deadline or any(p.poll() not in (None, 0) for p, _ in procs):
            raise RuntimeError("a session did not get ready: %s" % [p.stderr.read() for p, _ in procs if p.poll()])
        time.sleep(0.01)
    open(go, "w").close()
    out = []
    for p, _ in procs:
        stdout = p.stdout.read()
        err = p.stderr.read()
        if p.wait() != 0:
            raise RuntimeError("session failed: %s" % err)
        times = [float(m.group(1)) / 1000.0 for m in re.finditer(r"Time: ([0-9.]+) ms", stdout)]
        last = [l for l in stdout.split("\n") if l.count("|") == 2][-1]
        out.append((times, last))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=2)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch", type=int, default=0,
                    help="score with medtl.predict_batch in batches of N instead of predict per row")
    ap.add_argument("--keep-db", action="store_true")
    args = ap.parse_args()
    cores = os.cpu_count()
    shared = os.environ.get("MEDTL_SHARED") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared")
    mdir = os.path.join(shared, "models", "mobilenet_v2_imagenet")
    with open(os.path.join(mdir, "labels.txt"), encoding="utf-8") as f:
        labels = [l.rstrip("\n") for l in f]
    ddir = os.path.join(shared, "data", "chest_xray")
    with open(os.path.join(ddir, "manifest.csv"), newline="", encoding="utf-8") as f:
        paths = [os.path.join(ddir, r["path"]) for r in csv.DictReader(f) if r["split"] == "test"]
    if args.limit:
        paths = paths[:args.limit]
    n = len(paths)

    psql("DROP DATABASE IF EXISTS %s;" % DB, db="postgres")
    psql("CREATE DATABASE %s;" % DB, db="postgres")
    try:
        psql("CREATE EXTENSION medtl;")
        psql("SELECT medtl.import_model_file('m', 'mobilenet_v2', %s, labels => ARRAY[%s]::text[], "
             "mean => '{0.5,0.5,0.5}', std => '{0.5,0.5,0.5}', padding => 'tf_same');"
             % (sql_lit(os.path.abspath(os.path.join(mdir, "mobilenet_v2_imagenet.safetensors"))),
                ",".join(sql_lit(l) for l in labels)))
        psql("CREATE TABLE xrays (id int PRIMARY KEY, image bytea NOT NULL);\n"
             "INSERT INTO xrays SELECT id, medtl.read_server_file(path) FROM (VALUES %s) v(id, path);\n"
             "ANALYZE xrays;" % ",".join("(%d, %s)" % (i, sql_lit(os.path.abspath(p))) for i, p in enumerate(paths)))
        print("%d images; %d cores; %d sessions at once, %d timed passes each; %s; load average %.1f"
              % (n, cores, args.sessions, args.passes,
                 "predict_batch, batches of %d" % args.batch if args.batch else "predict per row",
                 os.getloadavg()[0]))
        settings = [(0, "medtl.threads = 0 (default: adaptive)"),
                    (cores, "medtl.threads = %d (every core, fixed)" % cores),
                    (1, "medtl.threads = 1 (fixed)")]
        res = {}
        with tempfile.TemporaryDirectory() as tmp:
            os.chmod(tmp, 0o777)
            for s, name in settings:
                alone = run_sessions(1, s, args.passes, tmp, args.batch)
                together = run_sessions(args.sessions, s, args.passes, tmp, args.batch)
                a = min(alone[0][0])
                t = [min(x[0]) for x in together]
                res[s] = (a, t)
                print("%-40s alone %6.3f s a pass (chose threads|probes|moves %s); together %s s a pass each (%s)"
                      % (name, a, alone[0][1], " ".join("%.3f" % x for x in t),
                         ", ".join(x[1] for x in together)))
        print()
        print("| setting | alone, s a pass | %d together, s a pass (slowest) | machine img/s together | "
              "together / alone | img/s together / default's |" % args.sessions)
        print("| --- | --- | --- | --- | --- | --- |")
        d_rate = args.sessions * n / max(res[0][1])
        for s, name in settings:
            a, t = res[s]
            rate = args.sessions * n / max(t)
            print("| %s | %.3f | %.3f | %.1f | %.2f | %.2f |" % (name, a, max(t), rate, max(t) / a, rate / d_rate))
    finally:
        if not args.keep_db:
            psql("DROP DATABASE IF EXISTS %s;" % DB, db="postgres")


if __name__ == "__main__":
    main()
