#!/usr/bin/python3
"""Benchmark (not a test): inference of every CNN of the zoo, medtl vs PyTorch.

Run through `test/run bench-models [options]` (which starts the cluster and
sets PGHOST, PGPORT, PGUSER, MEDTL_WORK) with Debian's /usr/bin/python3.

For each architecture (default: mobilenet_v2, resnet18, resnet50,
densenet121, efficientnet_b0; add vit_b_16 with --archs), at 224x224 and in
the same run, same thread count:

  engine      test/bin/bench_engine ARCH BATCH THREADS SECONDS: medtl's
              engine alone on a pre-made batch (random weights)
  SQL         a torchvision model with random weights exported as
              safetensors, imported with medtl.import_model_file, and
              `SELECT count(medtl.predict(...)) FROM imgs` over --images
              generated 224x224 PNGs (decode + forward per row; batch 1),
              and `medtl.predict_batch(..., batch_size => 16)` over the same
              images (batch 16); the model cache is warmed first
  winograd    at batch 16, engine and SQL again with medtl.conv_kernels =
              winograd (MEDTL_CONV_KERNELS for the engine): the opt-in
              Winograd kernels for dense 3x3 stride-1 convolutions
  PyTorch     the same model, eval + no_grad: eager and TorchScript
              (jit.trace + freeze) with channels_last, on pre-made tensors,
              batch 1 and 16; the best of them is "PyTorch best"

Each figure is the best of --runs rounds (every variant once per round, so
that other work on the machine hits all alike).  Prints images/s and the
ratios medtl/PyTorch-best; --csv PATH appends rows (timestamp, machine,
arch, what, batch, images_per_s).

After the speeds, the memory of a fresh backend that loads the model and
scores every row: its peak private memory (RssAnon, sampled every
millisecond from /proc while it loads and scores), its private memory
after scoring, and its peak resident set (VmHWM, which also counts the
shared-buffer pages of medtl.weights it read and mapped libraries), next
to 2 x the weights + 100 MB.

Then training at batch 16 (SGD with momentum, cross-entropy) for
--train-archs (default mobilenet_v2, resnet18): the engine's training step
(test/bin/train_step bench, full fine-tune and head only: the mean of 4
steps after a first), medtl.train()
over --train-images rows of the generated images (2 epochs of full
fine-tuning, timed by the second epoch's row in medtl.epochs: batches and
steps from the decoded images; and --head-epochs epochs head only, timed
end to end by medtl.runs, where medtl computes the frozen backbone's
features once, against PyTorch's rate x images x epochs) and PyTorch eager
(full fine-tune; head only as the usual loop does it, the best of
model.train() with frozen backbone parameters and an eval-mode backbone
under no_grad), with the ratios; full fine-tuning in the engine and
through SQL again with medtl.conv_kernels = direct (oneDNN's direct
kernels only: the default, auto, trains dense 3x3 stride-1 convolutions
through its Winograd kernels, which PyTorch does not use).

The fraction of the machine's fp32 peak: the engine's convolutions'
arithmetic (2 x multiply-adds per image x images/s) against OpenBLAS sgemm
1024^3 on the same threads (close to the cores' fp32 peak with the right
kernel set).  Parallel workers: test/bench_predict.py.
"""
import argparse
import csv
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from medtl_testlib import PSQL, psql as _psql, sql_lit, write_safetensors  # noqa: E402

DB = "medtl_bench_models"
HERE = os.path.dirname(os.path.abspath(__file__))
ENGINE = os.path.join(HERE, "bin", "bench_engine")


def psql(sql, timing=False):
    return _psql(sql, DB, timing)


def backend_memory(setup, sql):
    """Run setup + sql in a fresh backend while sampling its
    /proc/PID/status every millisecond; returns (peak RssAnon, peak VmHWM,
    RssAnon at the end, peak RssShmem, peak RssFile), in bytes; sql's own
    output is read and dropped.  RssAnon is the backend's private memory;
    VmHWM also counts the shared-buffer pages it touched (RssShmem: the
    server's shared_buffers, allocated once by the postmaster) and mapped
    files (RssFile: libraries).
    Needs to run on the database's machine as a user that may read the
    backend's /proc entry (root, or postgres)."""
    import threading
    p = subprocess.Popen([PSQL, "-X", "-At", "-q", "-v", "ON_ERROR_STOP=1", "-d", DB],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    p.stdin.write(setup + "SELECT pg_backend_pid();\n")
    p.stdin.flush()
    pid = int(p.stdout.readline())
    keys = ("RssAnon", "VmHWM", "RssShmem", "RssFile")
    peak = {k: 0 for k in keys}
    last = {}
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                with open("/proc/%d/status" % pid) as f:
                    for line in f:
                        k, _, v = line.partition(":")
                        if k in keys:
                            last[k] = int(v.split()[0]) * 1024
                            peak[k] = max(peak[k], last[k])
            except OSError:
                return
            time.sleep(0.001)
    t = threading.Thread(target=sample)
    t.start()
    p.stdin.write(sql + "SELECT 1;\n")
    p.stdin.flush()
    # wait for the marker so the backend is still there for the last sample
    while True:
        line = p.stdout.readline()
        if line == "" or line.strip() == "1":
            break
    time.sleep(0.01)
    done.set()
    t.join()
    p.stdin.close()
    p.wait()
    return peak["RssAnon"], peak["VmHWM"], last.get("RssAnon", 0), peak["RssShmem"], peak["RssFile"]


def machine_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


CONV_GFLOP = {}     # arch -> GFLOP of its convolutions per 224x224 image


def engine_rate(arch, batch, threads, seconds, kernels=None):
    env = dict(os.environ)
    if kernels:
        env["MEDTL_CONV_KERNELS"] = kernels
    out = subprocess.run([ENGINE, arch, str(batch), str(threads), str(seconds)],
                         capture_output=True, text=True, check=True, env=env).stdout
    m = re.search(r": ([0-9.]+) images/s \(mean\)", out)
    if not m:
        raise RuntimeError("unexpected bench_engine output: %r" % out)
    g = re.search(r"convolutions ([0-9.]+) GFLOP per image", out)
    if g:
        CONV_GFLOP[arch] = float(g.group(1))
    return float(m.group(1))


def sgemm_peak(threads):
    """GFLOP/s of OpenBLAS sgemm 1024^3: the reference for the fp32 peak."""
    out = subprocess.run([ENGINE, "sgemm", str(threads), "3"], capture_output=True, text=True, check=True).stdout
    m = re.search(r": ([0-9.]+) GFLOP/s", out)
    return float(m.group(1)) if m else 0.0


STEP = os.path.join(HERE, "bin", "train_step")


def engine_train_rate(arch, threads, freeze, kernels=None):
    env = dict(os.environ)
    if kernels:
        env["MEDTL_CONV_KERNELS"] = kernels
    out = subprocess.run([STEP, "bench", arch, "224", "224", "16", str(threads), freeze],
                         capture_output=True, text=True, check=True, env=env).stdout
    m = re.search(r"\(([0-9.]+) img/s\)", out)
    if not m:
        raise RuntimeError("unexpected train_step output: %r" % out)
    return float(m.group(1))


def head_params(arch, model):
    head = model.fc if arch.startswith("resnet") else model.classifier
    return list(head.parameters())


def torch_train_rates(arch, seconds):
    """Images/s of PyTorch training steps at batch 16 (SGD momentum 0.9,
    cross-entropy, eager, channels_last): full fine-tune, and head only as
    the usual loop does it, best of (a) model.train() with the backbone's
    parameters frozen and (b) the backbone in eval mode under no_grad, then
    the head."""
    import torch
    import torchvision
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=2).to(memory_format=torch.channels_last)
    x = torch.randn(16, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (16,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def timed(step):
        for _ in range(2):
            step()
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            step()
            n += 16
        return n / (time.perf_counter() - t0)

    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def full():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    r_full = timed(full)

    head = head_params(arch, model)
    ids = set(id(p) for p in head)
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    opt_h = torch.optim.SGD(head, lr=0.01, momentum=0.9)

    def head_a():
        opt_h.zero_grad()
        loss_fn(model(x), y).backward()
        opt_h.step()
    r_a = timed(head_a)

    if arch.startswith("resnet"):
        trunk = torch.nn.Sequential(*list(model.children())[:-1], torch.nn.Flatten())
        fc = model.fc
    else:
        trunk = torch.nn.Sequential(model.features, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        fc = model.classifier

    def head_b():
        trunk.eval()
        with torch.no_grad():
            f = trunk(x)
        fc.train()
        opt_h.zero_grad()
        loss_fn(fc(f), y).backward()
        opt_h.step()
    r_b = timed(head_b)
    for p in model.parameters():
        p.requires_grad_(True)
    return r_full, max(r_a, r_b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default="mobilenet_v2,resnet18,resnet50,densenet121,efficientnet_b0")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--csv")
    ap.add_argument("--train-archs", default="mobilenet_v2,resnet18",
                    help="architectures whose training is measured ('' for none)")
    ap.add_argument("--head-epochs", type=int, default=10)
    ap.add_argument("--train-images", type=int, default=256)
    args = ap.parse_args()

    import numpy as np
    import torch
    import torchvision
    from PIL import Image

    torch.set_num_threads(args.threads)
    base = os.environ.get("MEDTL_WORK") or tempfile.mkdtemp(prefix="medtl_bench_")
    work = os.path.join(base, "bench_models")
    os.makedirs(work, exist_ok=True)
    os.chmod(base, 0o755)
    os.chmod(work, 0o755)
    print("machine: %s; %d threads; torch %s; %d images; best of %d" % (
        machine_name(), args.threads, torch.__version__, args.images, args.runs), flush=True)

    _psql("DROP DATABASE IF EXISTS %s;" % DB, "postgres")
    _psql("CREATE DATABASE %s;" % DB, "postgres")
    psql("CREATE EXTENSION medtl; CREATE TABLE imgs (id int, image bytea);")
    rng = np.random.default_rng(1)
    for i in range(args.images):
        path = os.path.join(work, "img%03d.png" % i)
        Image.fromarray(rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8), "RGB").save(path)
        os.chmod(path, 0o644)
        psql("INSERT INTO imgs VALUES (%d, medtl.read_server_file(%s));" % (i, sql_lit(path)))
    setup = "SET medtl.threads = %d; SET max_parallel_workers_per_gather = 0;\n" % args.threads

    def import_random(arch):
        """torchvision's arch with seeded random weights, imported as arch."""
        torch.manual_seed(0)
        model = getattr(torchvision.models, arch)(num_classes=1000).eval()
        path = os.path.join(work, "%s.safetensors" % arch)
        write_safetensors(path, model.state_dict())
        psql("SELECT medtl.import_model_file(%s, %s, %s, replace => true);" % (sql_lit(arch), sql_lit(arch), sql_lit(path)))
        os.unlink(path)
        return model

    peak = sgemm_peak(args.threads)
    print("fp32 reference: OpenBLAS sgemm 1024^3 on %d threads, %.1f GFLOP/s" % (args.threads, peak), flush=True)
    results = [("sgemm", "sgemm 1024^3 GFLOP/s", 0, peak)]
    for arch in [a for a in args.archs.split(",") if a]:
        model = import_random(arch)

        def sql_rate(batch, kernels=None):
            if batch == 1:
                q = "SELECT count(medtl.predict(%s, image)) FROM imgs;\n" % sql_lit(arch)
            else:
                q = ("SELECT count(*) FROM medtl.predict_batch(%s, ARRAY(SELECT image FROM imgs ORDER BY id), %d);\n"
                     % (sql_lit(arch), batch))
            warm = "SELECT count(medtl.predict(%s, image)) FROM (SELECT image FROM imgs LIMIT 2) w;\n" % sql_lit(arch)
            if batch > 1:
                # the batch's shape too: each backend is fresh, and a kernel's
                # first batch of a shape prepares it (weights into its layout)
                warm += ("SELECT count(*) FROM medtl.predict_batch(%s, ARRAY(SELECT image FROM imgs ORDER BY id LIMIT %d), %d);\n"
                         % (sql_lit(arch), batch, batch))
            kset = "SET medtl.conv_kernels = %s;\n" % kernels if kernels else ""
            out = psql(setup + kset + warm + q, timing=True)
            times = [float(m.group(1)) / 1000.0 for m in (re.match(r"Time: ([0-9.]+) ms", l) for l in out) if m]
            return args.images / times[-1]

        xs = {bs: torch.randn(bs, 3, 224, 224).contiguous(memory_format=torch.channels_last) for bs in (1, 16)}
        cl = model.to(memory_format=torch.channels_last)
        with torch.no_grad():
            traced = torch.jit.freeze(torch.jit.trace(cl, xs[1]))
            for bs in (1, 16):
                for _ in range(3):
                    traced(xs[bs])

        def torch_rate(net, bs):
            def run():
                n = 0
                t0 = time.perf_counter()
                with torch.no_grad():
                    while time.perf_counter() - t0 < args.seconds:
                        net(xs[bs])
                        n += bs
                return n / (time.perf_counter() - t0)
            return run

        variants = []
        for bs in (1, 16):
            variants.append(("medtl engine", bs, lambda bs=bs: engine_rate(arch, bs, args.threads, args.seconds)))
            variants.append(("medtl SQL", bs, lambda bs=bs: sql_rate(bs)))
            if bs > 1:
                # the opt-in Winograd kernels (medtl.conv_kernels = winograd)
                variants.append(("medtl engine, winograd", bs,
                                 lambda bs=bs: engine_rate(arch, bs, args.threads, args.seconds, "winograd")))
                variants.append(("medtl SQL, winograd", bs, lambda bs=bs: sql_rate(bs, "winograd")))
            variants.append(("PyTorch eager channels_last", bs, torch_rate(cl, bs)))
            variants.append(("PyTorch TorchScript channels_last", bs, torch_rate(traced, bs)))
        best = {}
        for _ in range(args.runs):
            for name, bs, fn in variants:
                r = fn()
                best[(name, bs)] = max(best.get((name, bs), 0.0), r)
        print("\n== %s (224x224, %d threads)" % (arch, args.threads), flush=True)
        for bs in (1, 16):
            pt = max(best[("PyTorch eager channels_last", bs)], best[("PyTorch TorchScript channels_last", bs)])
            for name, b, _ in variants:
                if b != bs:
                    continue
                r = best[(name, bs)]
                ratio = " medtl/PyTorch-best %.2f" % (r / pt) if name.startswith("medtl") else ""
                print("  batch %2d  %-36s %8.1f img/s%s" % (bs, name, r, ratio), flush=True)
                results.append((arch, name, bs, r))
        if arch in CONV_GFLOP and peak > 0:
            for bs in (1, 16):
                rate = CONV_GFLOP[arch] * best[("medtl engine", bs)]
                print("  convs     batch %2d: %.2f GFLOP per image, %.1f GFLOP/s, %.0f%% of sgemm's %.1f"
                      % (bs, CONV_GFLOP[arch], rate, 100.0 * rate / peak, peak), flush=True)
                results.append((arch, "engine conv GFLOP/s", bs, rate))
        # memory of a fresh backend that loads the model and scores every row
        # (batch 1): peak resident set (VmHWM: private memory, shared-buffer
        # pages of medtl.weights it read, mapped libraries) and private
        # memory after scoring (RssAnon), against 2 x weights + 100 MB
        wbytes = int(psql("SELECT sum(length(w.data)) FROM medtl.weights w JOIN medtl.models m USING (model_id)"
                          " WHERE m.name = %s;" % sql_lit(arch))[0])
        peak_anon, hwm, anon, shmem, files = backend_memory(
            setup, "SELECT count(medtl.predict(%s, image)) FROM imgs;\n" % sql_lit(arch))
        limit = 2 * wbytes + 100e6
        print("  memory    weights %.1f MB; backend peak private %.1f MB (sampled every ms), private after "
              "%.1f MB, peak RSS %.1f MB (of which shared-buffer pages read, peak %.1f MB, and mapped "
              "files, peak %.1f MB); 2 x weights + 100 MB = %.1f MB"
              % (wbytes / 1e6, peak_anon / 1e6, anon / 1e6, hwm / 1e6, shmem / 1e6, files / 1e6,
                 limit / 1e6), flush=True)
        results.append((arch, "backend peak private MB", 1, peak_anon / 1e6))
        results.append((arch, "backend peak RSS MB", 1, hwm / 1e6))
        results.append((arch, "backend peak shared-buffer RSS MB", 1, shmem / 1e6))
        results.append((arch, "backend private MB", 1, anon / 1e6))
        results.append((arch, "weights MB", 1, wbytes / 1e6))
        psql("SELECT medtl.drop_model(%s);" % sql_lit(arch))

    # training at batch 16: engine (train_step bench), SQL (medtl.train over
    # the generated images, end to end from the table) and PyTorch eager
    train_archs = [a for a in args.train_archs.split(",") if a]
    if train_archs:
        # --train-images rows, the generated images repeated, labels a and b
        psql("CREATE TABLE timgs AS SELECT i.image, CASE WHEN g %% 2 = 0 THEN 'a' ELSE 'b' END AS label"
             " FROM generate_series(0, %d) g JOIN imgs i ON i.id = g %% %d;" % (args.train_images - 1, args.images))
    for arch in train_archs:
        import_random(arch)

        def sql_train(freeze, epochs, kernels=None):
            # (seconds of the whole run, seconds of its last epoch)
            # train() once (a volatile call in a WHERE clause would run per row)
            kset = "SET medtl.conv_kernels = %s;\n" % kernels if kernels else ""
            out = psql(setup + kset + "SELECT medtl.create_model('t_' || %(a)s, %(a)s, ARRAY['a', 'b'], replace => true);\n"
                       "SELECT medtl.train('t_' || %(a)s, 'timgs', "
                       "epochs => %(e)d, batch_size => 16, optimizer => 'sgd', lr => 0.01, freeze => %(f)s, "
                       "augment => false, validation => 0%(bn)s) AS rid \\gset\n"
                       "SELECT r.seconds || ' ' || e.seconds FROM medtl.runs r JOIN medtl.epochs e USING (run_id)"
                       " WHERE r.run_id = :rid ORDER BY e.phase DESC, e.epoch DESC LIMIT 1;\n"
                       % {"a": sql_lit(arch), "e": epochs, "f": sql_lit(freeze),
                          "bn": ", batch_norm => 'train'" if freeze == "none" else ""})
            run_s, epoch_s = (float(v) for v in out[-1].split())
            return run_s, epoch_s

        best = {}
        for _ in range(args.runs):
            for key, fn in (("engine full", lambda: engine_train_rate(arch, args.threads, "none")),
                            ("engine head", lambda: engine_train_rate(arch, args.threads, "backbone")),
                            ("SQL full", lambda: args.train_images / sql_train("none", 2)[1]),
                            ("engine full direct",
                             lambda: engine_train_rate(arch, args.threads, "none", "direct")),
                            ("SQL full direct",
                             lambda: args.train_images / sql_train("none", 2, "direct")[1]),
                            ("SQL head 10 epochs s", lambda: -sql_train("backbone", args.head_epochs)[0]),
                            ("torch", lambda: torch_train_rates(arch, args.seconds))):
                r = fn()
                if key == "torch":
                    best["torch full"] = max(best.get("torch full", 0.0), r[0])
                    best["torch head"] = max(best.get("torch head", 0.0), r[1])
                else:
                    best[key] = max(best.get(key, -1e30), r)
        head_s = -best["SQL head 10 epochs s"]
        torch_head_s = args.head_epochs * args.train_images / best["torch head"]
        print("\n== %s training (224x224, batch 16, SGD, %d threads)" % (arch, args.threads), flush=True)
        for name, key in (("medtl engine, full fine-tune", "engine full"),
                          ("medtl SQL train(), full fine-tune, epoch 2", "SQL full"),
                          ("medtl engine, full, direct kernels", "engine full direct"),
                          ("medtl SQL train(), full, direct, epoch 2", "SQL full direct"),
                          ("PyTorch eager, full fine-tune", "torch full"),
                          ("medtl engine, head only", "engine head"),
                          ("PyTorch eager, head only (best loop)", "torch head")):
            ratio = ""
            if key.startswith("engine") or key.startswith("SQL"):
                ratio = " medtl/PyTorch %.2f" % (best[key] / best["torch " + key.split()[1]])
            print("  %-40s %8.1f img/s%s" % (name, best[key], ratio), flush=True)
            results.append((arch, "train " + name, 16, best[key]))
        print("  head only, %d epochs over %d images: medtl SQL train(freeze => 'backbone') %.1f s (features"
              " computed once), PyTorch loop %.1f s (backbone every epoch): %.1fx" % (
                  args.head_epochs, args.train_images, head_s, torch_head_s, torch_head_s / head_s), flush=True)
        results.append((arch, "train head-only epochs SQL s", 16, head_s))
        results.append((arch, "train head-only epochs PyTorch s", 16, torch_head_s))
        psql("SELECT medtl.drop_model('t_' || %s); SELECT medtl.drop_model(%s);" % (sql_lit(arch), sql_lit(arch)))

    if args.csv:
        new = not os.path.exists(args.csv)
        with open(args.csv, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["timestamp", "machine", "arch", "what", "batch", "images_per_s"])
            for r in results:
                w.writerow([datetime.datetime.now().isoformat(timespec="seconds"), machine_name()] + list(r))
    _psql("DROP DATABASE IF EXISTS %s;" % DB, "postgres")


if __name__ == "__main__":
    main()
