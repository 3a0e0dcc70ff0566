#!/usr/bin/env bash
# test/gpu_sql_check.sh - training and scoring from SQL on a lent GPU machine
# (no PostgreSQL there): unpacks .gpu/sql/bundle.tar.xz (made here by
# test/gpu_prepare_sql.sh: Debian's PostgreSQL 15 with medtl built
# WITH_CUDA=1, the libraries they need, and the data from ../shared), starts
# a cluster as an unprivileged user, and runs
#   1. sql/setup.sql (pg_regress's setup: the extension, the samples, the 24
#      X-rays) and test/cuda_emu/train_check.sql on the real device: every
#      layer trained with SGD on the device against the CPU, the head on
#      device features in bf16, the memory cap, two statement_timeout
#      cancels (its "ok:"/"FAIL:" verdicts are counted);
#   2. test/bench_train.py on PneumoniaMNIST with medtl.device = cuda:
#      fine_tune's defaults on the ImageNet MobileNetV2, evaluate on the test
#      split, against issue 3's targets;
#   3. the same on BreastMNIST over seeds 42 and 1-6, then seed 42 on this
#      machine's CPU (all its cores) for the time ratio, if time is left;
#   4. BreastMNIST seed 42 on the device with the host's work (decoding,
#      augmentation, normalisation) on 1 thread and on all: the times, and
#      the same metrics from both;
#   5. (only when GPU_SQL_SCREEN is set) BreastMNIST over the 7 seeds once
#      per option set in GPU_SQL_SCREEN ('|' between sets, e.g.
#      "head_lr_scale => 10|head_lr_scale => 3"; an empty set: the
#      defaults), information for issue 3's series, nothing judged but
#      that each ran.
# Writes $OUT/gpu_sql_check.log (and the server log); exit 0 only when every
# step passed.  Budget: about 5 minutes; give the device run 600 s.
#
#   bash test/gpu_prepare_sql.sh   (here, before lending the machine)
#   bash test/gpu_sql_check.sh     (there, with ".gpu/sql" carried)
#   GPU_SQL_STEPS="1 2 3" selects steps; GPU_SQL_MEDTL_SO=PATH replaces the
#   bundle's medtl.so (to try the script here on the CUDA emulation's build);
#   GPU_SQL_DEVICE=cpu GPU_SQL_LIMIT=5 tries steps 2 and 3 quickly without one;
#   GPU_SQL_LOCAL=1 (with GPU_SQL_MEDTL_SO) needs no bundle: this machine's
#   PostgreSQL 15 and ../shared (how test/cuda_build_check.sh runs step 1 on
#   the CUDA emulation); GPU_SQL_DIR, GPU_SQL_PORT: where and on which port.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here" || exit 2
OUT=${OUT:-/tmp/medtl-gpu-sql-out}
mkdir -p "$OUT"
LOG=$OUT/gpu_sql_check.log
rm -f "$OUT/bench.txt" "$OUT/bench_cpu.txt" "$OUT/bench_threads.txt" "$OUT/screen.txt"
exec > >(tee "$LOG") 2>&1
steps=${GPU_SQL_STEPS:-1 2 3 4}
[ -z "${GPU_SQL_SCREEN+x}" ] || steps="$steps 5"
budget=${GPU_SQL_BUDGET:-420}
# trying the script out: GPU_SQL_DEVICE=cpu GPU_SQL_LIMIT=5 (images per class and split)
dev=${GPU_SQL_DEVICE:-cuda}
# GPU_SQL_PRECISION=bf16: steps 2 and 3 train and score with bf16 GEMM operands
prec=${GPU_SQL_PRECISION:-fp32}
limit=${GPU_SQL_LIMIT:+--limit $GPU_SQL_LIMIT}
start=$(date +%s)
status=0
results=()
elapsed() { echo $(( $(date +%s) - start )); }
step() { printf '\n== %s (t=%ss)\n' "$*" "$(elapsed)"; }
fail() { echo "GPU_SQL FAIL: $*"; results+=("FAIL  $*"); status=1; }
pass() { echo "PASS: $*"; results+=("PASS  $*"); }
B=${GPU_SQL_DIR:-/tmp/medtl-sql}
PORT=${GPU_SQL_PORT:-5499}
finish() {
	if [ -n "${PGB:-}" ] && [ -d "$B/data" ]; then
		$RUN "$PGB/pg_ctl" -D "$B/data" -m fast -w stop >/dev/null 2>&1
		if grep -E 'terminated by signal|PANIC|server process .* was terminated' "$B/server.log" >/dev/null 2>&1; then
			fail "the server log shows a crashed backend"
		fi
		cp "$B/server.log" "$OUT/server.log" 2>/dev/null
	fi
	step "summary"
	for r in "${results[@]}"; do echo "$r"; done
	[ -f "$OUT/bench.txt" ] && { echo; grep -E 'seed|mean|test n=' "$OUT/bench.txt" | sed 's/; baseline.*//'; }
	[ -f "$OUT/screen.txt" ] && { echo; grep -E 'seed|mean|options|test n=' "$OUT/screen.txt" | sed 's/; baseline.*//'; }
	if [ "$status" -eq 0 ]; then echo "GPU_SQL_CHECK OK"; else echo "GPU_SQL_CHECK FAILED"; fi
	exit "$status"
}

step "machine"
date -u
echo "cpus: $(nproc)"
timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "note: nvidia-smi failed"

if [ -n "${GPU_SQL_LOCAL:-}" ]; then
	# no bundle: this machine's PostgreSQL 15 copied beside GPU_SQL_MEDTL_SO
	# (test/cuda_emu/build_so.sh's medtl.so: test/cuda_build_check.sh runs step
	# 1 so, on the CUDA emulation) and the checkout's extension files
	step "stage this machine's PostgreSQL 15"
	[ -f "${GPU_SQL_MEDTL_SO:-}" ] || { fail "GPU_SQL_LOCAL needs GPU_SQL_MEDTL_SO"; finish; }
	rm -rf "$B"
	mkdir -p "$B/root/usr/lib/postgresql/15/lib" "$B/root/usr/share/postgresql" "$B/lib"
	cp -a /usr/lib/postgresql/15/bin "$B/root/usr/lib/postgresql/15/" &&
		cp /usr/lib/postgresql/15/lib/plpgsql.so /usr/lib/postgresql/15/lib/dict_snowball.so \
			"$B/root/usr/lib/postgresql/15/lib/" &&
		cp -a /usr/share/postgresql/15 "$B/root/usr/share/postgresql/" &&
		rm -f "$B"/root/usr/share/postgresql/15/extension/medtl* &&
		cp medtl.control sql/medtl--*.sql "$B/root/usr/share/postgresql/15/extension/" ||
		{ fail "staging PostgreSQL"; finish; }
	shared_dir=$(cd "${MEDTL_SHARED:-$here/../shared}" && pwd)
	origin="this machine's, staged"
else
	step "unpack"
	[ -f .gpu/sql/bundle.tar.xz ] || { fail "no .gpu/sql/bundle.tar.xz (run test/gpu_prepare_sql.sh here and carry .gpu/sql)"; finish; }
	rm -rf "$B"
	mkdir -p "$B"
	tar -C "$B" -xJf .gpu/sql/bundle.tar.xz || { fail "unpacking the bundle"; finish; }
	shared_dir=$B/shared
	origin="from the bundle"
fi
PGB=$B/root/usr/lib/postgresql/15/bin
# testing the script without a GPU: another medtl.so (test/cuda_emu/build_so.sh's)
[ -z "${GPU_SQL_MEDTL_SO:-}" ] || cp "$GPU_SQL_MEDTL_SO" "$B/root/usr/lib/postgresql/15/lib/medtl.so"
# CUDA's libraries: the toolkit's, else pip's nvidia wheels
cudalib=
for d in ${CUDA_HOME:-/usr/local/cuda}/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
		$(python3 -c 'import site; print(" ".join(p + "/nvidia" for p in site.getsitepackages()))' 2>/dev/null); do
	[ -d "$d" ] || continue
	f=$(find -L "$d" -maxdepth 4 -name 'libcublas.so.1*' -print -quit 2>/dev/null)
	[ -n "$f" ] && { cudalib=$(dirname "$f"); break; }
done
[ -n "$cudalib" ] || [ -n "${GPU_SQL_LOCAL:-}" ] || { fail "libcublas.so not found"; finish; }
rt=$(find -L "$(dirname "$cudalib")" /usr/local/cuda* -maxdepth 4 -name 'libcudart.so.1*' -print -quit 2>/dev/null)
export LD_LIBRARY_PATH="$B/lib${cudalib:+:$cudalib}${rt:+:$(dirname "$rt")}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "cuBLAS: $cudalib  cudart: ${rt:-?}"
if ldd "$B/root/usr/lib/postgresql/15/lib/medtl.so" | grep 'not found'; then
	fail "medtl.so has unresolved libraries"; finish
fi
ldd "$PGB/postgres" | grep 'not found' && { fail "postgres has unresolved libraries"; finish; }

step "cluster"
RUN=
if [ "$(id -u)" = 0 ]; then
	id medtlpg >/dev/null 2>&1 || useradd -M -d "$B" -s /bin/sh medtlpg 2>/dev/null ||
		{ fail "useradd medtlpg"; finish; }
	chown -R medtlpg "$B"
	RUN="runuser -u medtlpg -- env LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
fi
mkdir -p "$B/sock"
[ -z "$RUN" ] || chown medtlpg "$B/sock"
TZ=GMT $RUN "$PGB/initdb" -D "$B/data" -U medtl --auth=trust -E UTF8 --locale=C >"$B/initdb.log" 2>&1 ||
	{ cat "$B/initdb.log"; fail "initdb"; finish; }
$RUN "$PGB/pg_ctl" -D "$B/data" -l "$B/server.log" -w -t 60 \
	-o "-p $PORT -k $B/sock -c listen_addresses='' -c timezone=GMT -c log_timezone=GMT -c shared_buffers=512MB" start ||
	{ cat "$B/server.log"; fail "starting the server"; finish; }
export PGHOST=$B/sock PGPORT=$PORT PGUSER=medtl PGDATABASE=postgres MEDTL_SHARED=$shared_dir
export MEDTL_PSQL=$PGB/psql PATH=$PGB:$PATH PYTHONUNBUFFERED=1
psql -X -qAt -c "CREATE DATABASE medtl_sql_check" && pass "PostgreSQL 15 started ($origin)" ||
	{ fail "psql"; finish; }

if [[ " $steps " == *" 1 "* ]]; then
	step "1: pg_regress setup, then train_check.sql on the device"
	timeout 60 psql -X -d medtl_sql_check -v ON_ERROR_STOP=1 -q -f sql/setup.sql >"$OUT/setup.out" 2>&1 ||
		{ cat "$OUT/setup.out"; fail "sql/setup.sql"; finish; }
	psql -X -d medtl_sql_check -qAt -c "SELECT medtl.runtime_info()->>'cuda_device'" -c "SET medtl.device = cuda" \
		-c "SELECT medtl.runtime_info()->>'device'"
	timeout 900 psql -X -d medtl_sql_check -f test/cuda_emu/train_check.sql >"$OUT/train_check.out" 2>&1
	rc=$?
	cat "$OUT/train_check.out"
	nok=$(grep -c '^ *ok:' "$OUT/train_check.out")
	nfail=$(grep -c '^ *FAIL:' "$OUT/train_check.out")
	# the over-the-cap run and the two cancels must fail, and with these errors
	ncap=$(grep -c 'device memory' "$OUT/train_check.out")
	ncancel=$(grep -c 'canceling statement due to statement timeout' "$OUT/train_check.out")
	if [ "$rc" -eq 0 ] && [ "$nok" -eq 8 ] && [ "$nfail" -eq 0 ] && [ "$ncancel" -eq 2 ]; then
		pass "train_check.sql on the device: $nok verdicts ok, 2 cancels by statement_timeout"
	else
		fail "train_check.sql: rc $rc, $nok ok, $nfail FAIL, $ncancel cancels (want 8, 0, 2), $ncap lines on device memory"
	fi
fi

if [[ " $steps " == *" 2 "* ]]; then
	step "2: fine_tune defaults on PneumoniaMNIST on the device, $prec (bench_train.py)"
	PGOPTIONS="-c medtl.device=$dev -c medtl.precision=$prec" timeout 300 python3 test/bench_train.py --datasets pneumoniamnist $limit \
		> >(tee -a "$OUT/bench.txt") 2>&1
	rc=$?
	if [ "$rc" -eq 0 ] && grep -q '^pneumoniamnist: .* -> met' "$OUT/bench.txt"; then
		pass "PneumoniaMNIST fine_tune on the device ($prec): targets met"
	else
		fail "PneumoniaMNIST fine_tune on the device (rc $rc; see bench.txt)"
	fi
	# where each phase ran, and the epochs' times
	psql -X -d medtl_bench_train -c "SELECT run_id, k AS phase, p->>'device' AS device,
	        p->>'precision' AS precision, p->>'head_only_features' AS features_once, round(seconds::numeric, 1) AS run_s
	   FROM medtl.runs r, jsonb_array_elements(r.resolved->'phases') WITH ORDINALITY x(p, k) ORDER BY 1, 2" \
		-c "SELECT run_id, phase, epoch, round(seconds::numeric, 1) AS s, round(train_loss::numeric, 4) AS loss,
	        round(val_accuracy::numeric, 4) AS val_acc, round(val_auc::numeric, 4) AS val_auc FROM medtl.epochs ORDER BY 1, 2, 3"
	if [ "$(psql -X -d medtl_bench_train -qAt -c "SELECT count(*) FROM medtl.runs r, jsonb_array_elements(r.resolved->'phases') p
	        WHERE p->>'device' = '$dev'")" = 2 ]; then
		pass "both phases of the run recorded \"device\": \"$dev\""
	else
		fail "the run's phases do not record \"device\": \"$dev\""
	fi
fi

if [[ " $steps " == *" 3 "* ]]; then
	step "3: BreastMNIST over 7 seeds on the device"
	PGOPTIONS="-c medtl.device=$dev -c medtl.precision=$prec" timeout 240 python3 test/bench_train.py --datasets breastmnist $limit \
		--seeds 42,1,2,3,4,5,6 > >(tee -a "$OUT/bench.txt") 2>&1
	rc=$?
	if [ "$rc" -eq 0 ] && grep -q '^breastmnist: mean over 7 seeds' "$OUT/bench.txt"; then
		pass "BreastMNIST on the device, 7 seeds ran (targets: see the mean line)"
	else
		fail "BreastMNIST on the device (rc $rc)"
	fi
	if [ "$(elapsed)" -lt "$budget" ]; then
		step "3b: BreastMNIST seed 42 on this machine's CPU ($(nproc) threads), for the time ratio"
		PGOPTIONS="-c medtl.device=cpu" timeout $(( budget + 120 - $(elapsed) )) python3 test/bench_train.py \
			--datasets breastmnist --seeds 42 $limit > >(tee "$OUT/bench_cpu.txt") 2>&1 ||
			echo "note: the CPU run did not finish in the time left"
	else
		echo "note: no time left for the CPU run"
	fi
fi
if [[ " $steps " == *" 4 "* ]]; then
	step "4: BreastMNIST seed 42 on the device with the host on 1 thread, then on all $(nproc)"
	# the host decodes, augments and normalises every batch: its threads set
	# how fast the device is fed (the metrics must not change with them)
	for t in 1 "$(nproc)"; do
		PGOPTIONS="-c medtl.device=$dev -c medtl.precision=$prec -c medtl.threads=$t" timeout 120 \
			python3 test/bench_train.py --datasets breastmnist --seeds 42 $limit 2>&1 |
			grep -E '^breastmnist seed' | sed "s/^/threads $t: /; s/; baseline.*//" | tee -a "$OUT/bench_threads.txt"
	done
	if [ "$(cut -d' ' -f3- "$OUT/bench_threads.txt" | sed 's/; train .*//' | sort -u | wc -l)" = 1 ]; then
		pass "BreastMNIST seed 42: the same metrics with 1 host thread and with $(nproc)"
	else
		fail "BreastMNIST seed 42: the metrics change with the host's threads"
	fi
fi
if [[ " $steps " == *" 5 "* ]]; then
	IFS='|' read -r -a sets <<< "${GPU_SQL_SCREEN:-}"
	[ "${#sets[@]}" -gt 0 ] || sets=("")
	for o in "${sets[@]}"; do
		step "5: BreastMNIST over 7 seeds on the device, options: ${o:-(defaults)}"
		PGOPTIONS="-c medtl.device=$dev -c medtl.precision=$prec" timeout 240 python3 test/bench_train.py \
			--datasets breastmnist $limit --seeds 42,1,2,3,4,5,6 ${o:+--options "$o"} \
			> >(tee -a "$OUT/screen.txt") 2>&1
		rc=$?
		if [ "$rc" -eq 0 ]; then pass "BreastMNIST screen (${o:-defaults}) ran"
		else fail "BreastMNIST screen (${o:-defaults}): rc $rc"; fi
	done
fi
finish
