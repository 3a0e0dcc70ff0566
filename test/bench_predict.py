#!/usr/bin/python3
"""Benchmark (not a test): medtl.predict over the chest X-ray test split vs PyTorch.

Run through `test/run bench [options]` (which sets PGHOST, PGPORT, PGUSER,
PGDATABASE, MEDTL_WORK and MEDTL_SHARED) with Debian's /usr/bin/python3.

medtl: imports the pretrained MobileNetV2 from
$MEDTL_SHARED/models/mobilenet_v2_imagenet (padding 'tf_same', labels.txt),
loads the test-split JPEGs of $MEDTL_SHARED/data/chest_xray/manifest.csv into
a table with medtl.read_server_file, scores 10 rows to warm the backend's
model cache, then times `SELECT count(medtl.predict('m', image)) FROM xrays`
end to end in psql (\\timing) in that same session.

PyTorch: torchvision mobilenet_v2 loaded (strict) from the same safetensors
file, TF SAME padding emulated by ZeroPad2d((0,1,0,1)) before each stride-2
3x3 conv (whose padding becomes 0), eval, no_grad, the same number of threads.
Images are decoded with PIL and go through ToTensor + Normalize(0.5, 0.5).
Measured eager and torch.jit.trace (frozen), batch 1 and batch 16, both
"end to end" (file read + JPEG decode + transform + forward, as SQL decodes
each row) and "model only" (pre-decoded tensors).  Best of --runs; the runs
go in rounds (every variant once per round) so that other work on the
machine affects all variants alike.  Also reports how many of the images get
the same top-1 label from medtl and PyTorch.

Options: --limit N (use the first N test images), --threads N (medtl.threads
and torch.set_num_threads; default os.cpu_count()), --runs N (default 2),
--csv PATH (append result rows: timestamp, machine, what, images, seconds,
images_per_s), --parallel (let PostgreSQL use parallel workers; off by
default so that both sides run in one process with the same thread count).
"""
import argparse
import csv
import datetime
import os
import platform
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from medtl_testlib import read_safetensors, sql_lit  # noqa: E402
from medtl_testlib import psql as _psql  # noqa: E402

PSQL = "/usr/lib/postgresql/15/bin/psql"
DB = "medtl_bench"


def psql(sql, db=DB, timing=False):
    return _psql(sql, db, timing)


def machine_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def tf_same_mobilenet_v2(state_dict):
    """torchvision mobilenet_v2 with the given weights (strict) and TF SAME
    padding: ZeroPad2d((0,1,0,1)) + padding 0 on every stride-2 3x3 conv."""
    import torch
    import torchvision
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(state_dict, strict=True)
    patched = []
    for name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Conv2d) and tuple(child.stride) == (2, 2) \
                    and tuple(child.kernel_size) == (3, 3):
                child.padding = (0, 0)
                setattr(parent, child_name, torch.nn.Sequential(torch.nn.ZeroPad2d((0, 1, 0, 1)), child))
                patched.append((name + "." if name else "") + child_name)
    model.eval()
    return model, patched


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=None, help="use only the first N test images")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for medtl and torch")
    ap.add_argument("--runs", type=int, default=2, help="timed runs per measurement (best of)")
    ap.add_argument("--csv", default=None, help="append result rows to this CSV file")
    ap.add_argument("--parallel", action="store_true", help="allow parallel query workers in PostgreSQL")
    ap.add_argument("--keep-db", action="store_true", help="do not drop the benchmark database")
    args = ap.parse_args()

    import torch
    import torchvision
    import torchvision.transforms as T
    from PIL import Image

    shared = os.environ.get("MEDTL_SHARED") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared")
    mdir = os.path.join(shared, "models", "mobilenet_v2_imagenet")
    weights = os.path.join(mdir, "mobilenet_v2_imagenet.safetensors")
    with open(os.path.join(mdir, "labels.txt"), encoding="utf-8") as f:
        labels = [l.rstrip("\n") for l in f]
    ddir = os.path.join(shared, "data", "chest_xray")
    with open(os.path.join(ddir, "manifest.csv"), newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    if args.limit:
        rows = rows[:args.limit]
    paths = [os.path.join(ddir, r["path"]) for r in rows]
    n = len(paths)
    threads = max(1, args.threads)
    machine = machine_name()
    load0 = os.getloadavg()[0]

    # ---------------------------------------------------------------- medtl
    psql("DROP DATABASE IF EXISTS %s;" % DB, db="postgres")
    psql("CREATE DATABASE %s;" % DB, db="postgres")
    try:
        psql("CREATE EXTENSION medtl;")
        info = psql("SELECT medtl.runtime_info();")[0]
        print("medtl.runtime_info(): %s" % info)
        print("machine: %s; %d CPUs; threads %d; torch %s, torchvision %s"
              % (machine, os.cpu_count(), threads, torch.__version__, torchvision.__version__))
        psql("SELECT medtl.import_model_file('m', 'mobilenet_v2', %s, labels => ARRAY[%s]::text[], "
             "mean => '{0.5,0.5,0.5}', std => '{0.5,0.5,0.5}', padding => 'tf_same');"
             % (sql_lit(os.path.abspath(weights)), ",".join(sql_lit(l) for l in labels)))
        psql("CREATE TABLE xrays (id int PRIMARY KEY, path text, label text, image bytea NOT NULL);\n"
             "INSERT INTO xrays SELECT id, path, label, medtl.read_server_file(path) FROM (VALUES %s) v(id, path, label);\n"
             "ANALYZE xrays;"
             % ",".join("(%d, %s, %s)" % (i, sql_lit(os.path.abspath(p)), sql_lit(r["label"]))
                        for i, (p, r) in enumerate(zip(paths, rows))))
        size = psql("SELECT count(*), pg_size_pretty(sum(length(image))) FROM xrays;")[0]
        print("loaded %s images (count|bytes) into xrays" % size)

        setup = "SET medtl.threads = %d;\n" % threads
        if not args.parallel:
            setup += "SET max_parallel_workers_per_gather = 0;\n"
        # predictions for the agreement check (untimed; also loads the model once)
        m_pred = psql(setup + "SELECT medtl.predict('m', image) FROM xrays ORDER BY id;")

        # ---------------------------------------------------------- PyTorch
        torch.set_num_threads(threads)
        sd, _ = read_safetensors(weights)
        model, patched = tf_same_mobilenet_v2(sd)
        print("torch: TF SAME padding emulated on %s" % ", ".join(patched))
        tf = T.Compose([T.ToTensor(), T.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])])

        def load(p):
            with open(p, "rb") as f:
                img = Image.open(f)
                img = img.convert("RGB")
            if img.size != (224, 224):
                img = img.resize((224, 224), Image.BILINEAR)
            return tf(img)

        decoded = [load(p) for p in paths]
        with torch.no_grad():
            traced = torch.jit.trace(model, torch.zeros(1, 3, 224, 224))
            try:
                traced = torch.jit.freeze(traced)
                jit_name = "jit.trace+freeze"
            except Exception:
                jit_name = "jit.trace"
            for bs in (1, 16):
                for _ in range(3):
                    traced(torch.stack(decoded[:bs]))       # let the JIT profile and optimise
            t_pred = []
            for i in range(0, n, 16):
                t_pred += model(torch.stack(decoded[i:i + 16])).argmax(1).tolist()
        agree = sum(1 for a, b in zip(m_pred, t_pred) if a == labels[b])

        def timed_sql():
            q = "SELECT count(medtl.predict('m', image)) FROM xrays;\n"
            out = psql(setup + "SELECT count(medtl.predict('m', image)) FROM "
                       "(SELECT image FROM xrays ORDER BY id LIMIT 10) w;\n" + q, timing=True)
            times = [float(m.group(1)) / 1000.0 for m in (re.match(r"Time: ([0-9.]+) ms", l) for l in out) if m]
            counts = [l for l in out if not l.startswith("Time:")]
            if len(times) < 2 or counts[-1] != str(n):
                raise RuntimeError("unexpected psql output: %r" % out)
            return times[-1]

        def torch_loop(net, bs, end_to_end):
            def run():
                with torch.no_grad():
                    for i in range(0, n, bs):
                        if end_to_end:
                            x = torch.stack([load(p) for p in paths[i:i + bs]])
                        else:
                            x = torch.stack(decoded[i:i + bs])
                        net(x).argmax(1)
            return run

        def timed_sql_parallel(workers, threads_each):
            # the same query; workers > 0: that many parallel workers with
            # medtl.worker_threads = threads_each, the leader only gathering
            par = ("SET medtl.threads = %d; SET medtl.worker_threads = %d;\n"
                   "SET max_parallel_workers_per_gather = %d; SET parallel_leader_participation = %s;\n"
                   "SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0;\n"
                   % (threads_each, threads_each, workers, "off" if workers else "on"))
            q = "SELECT count(medtl.predict('m', image)) FROM xrays;\n"

            def run():
                # the heap is a few pages (images are TOASTed): the planner
                # gives it no worker unless told how many
                psql("ALTER TABLE xrays SET (parallel_workers = %d);" % max(workers, 1))
                out = psql(par + "\\timing on\n" + q + q + "\\timing off\nEXPLAIN (COSTS OFF) " + q)
                times = [float(m.group(1)) / 1000.0 for m in (re.match(r"Time: ([0-9.]+) ms", l) for l in out) if m]
                plan = " ".join(l for l in out if not l.startswith("Time:"))
                if workers and "Workers Planned: %d" % workers not in plan:
                    raise RuntimeError("no parallel plan: %s" % plan)
                if len(times) != 2:
                    raise RuntimeError("unexpected psql output: %r" % out)
                return times[1]
            return run

        def engine_only():
            # medtl's engine on a pre-made batch of one (no decode, no SQL):
            # random weights, TF SAME padding as the imported model: the same network
            out = subprocess.run([os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin", "bench_engine"),
                                  "mobilenet_v2", "1", str(threads), "3"],
                                 capture_output=True, text=True, check=True,
                                 env=dict(os.environ, MEDTL_PADDING_SAME="1")).stdout
            m = re.search(r": ([0-9.]+) images/s \(mean\)", out)
            return n / float(m.group(1))

        variants = [("medtl SQL count(predict) (decode+forward per row)", timed_sql),
                    ("medtl engine only, batch 1, pre-made tensors", engine_only),
                    ("medtl SQL, one process, 1 thread", timed_sql_parallel(0, 1)),
                    ("medtl SQL, 2 parallel workers x 1 thread", timed_sql_parallel(2, 1))]
        for name, net in (("eager", model), (jit_name, traced)):
            for bs in (1, 16):
                variants.append(("PyTorch %s batch %d end to end (read+decode+forward)" % (name, bs),
                                 torch_loop(net, bs, True)))
                variants.append(("PyTorch %s batch %d model only" % (name, bs), torch_loop(net, bs, False)))
        # Rounds: every variant once per round, best of --runs each, so that
        # other work on the machine hits all variants alike.
        best = {}
        for r in range(args.runs):
            for what, fn in variants:
                if what.startswith("medtl"):
                    secs = fn()
                else:
                    t0 = time.perf_counter()
                    fn()
                    secs = time.perf_counter() - t0
                best[what] = min(secs, best.get(what, secs))
                print("  round %d: %-70s %8.3f s" % (r + 1, what, secs), flush=True)
        results = [(what, n, best[what]) for what, _ in variants]
        t_sql = best[variants[0][0]]
    finally:
        if not args.keep_db:
            psql("DROP DATABASE IF EXISTS %s;" % DB, db="postgres")

    # -------------------------------------------------------------- report
    print()
    print("predictions: medtl and PyTorch agree on %d of %d images (top-1 ImageNet label)" % (agree, n))
    eng = best["medtl engine only, batch 1, pre-made tensors"]
    print("SQL predict() / engine only: %.2f (decode, resize and SQL cost %.0f%%)"
          % (eng / t_sql, 100.0 * (1 - eng / t_sql)))
    print("2 parallel workers x 1 thread / one process x 1 thread: %.2f; / one process x %d threads: %.2f"
          % (best["medtl SQL, one process, 1 thread"] / best["medtl SQL, 2 parallel workers x 1 thread"],
             threads, t_sql / best["medtl SQL, 2 parallel workers x 1 thread"]))
    print("%d chest X-ray test images (224x224 JPEG), %d threads, best of %d, %s"
          % (n, threads, args.runs, machine))
    print("load average at start %.2f, at end %.2f (other work on the machine skews the figures)"
          % (load0, os.getloadavg()[0]))
    w = max(len(r[0]) for r in results)
    print("%-*s %9s %9s %12s" % (w, "what", "seconds", "img/s", "medtl/this"))
    sql_rate = n / t_sql
    for what, images, secs in results:
        rate = images / secs
        print("%-*s %9.3f %9.1f %12.2f" % (w, what, secs, rate, sql_rate / rate))

    if args.csv:
        new = not os.path.exists(args.csv) or os.path.getsize(args.csv) == 0
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        with open(args.csv, "a", newline="") as f:
            wr = csv.writer(f)
            if new:
                wr.writerow(["timestamp", "machine", "what", "images", "seconds", "images_per_s"])
            for what, images, secs in results:
                wr.writerow([stamp, machine, "%s [threads=%d]" % (what, threads), images,
                             "%.4f" % secs, "%.2f" % (images / secs)])
        print("results appended to %s" % args.csv)


if __name__ == "__main__":
    main()
