#!/usr/bin/env bash
# test/cuda_build_check.sh - compile-and-link check of `make WITH_CUDA=1`.
#
# First runs the kernels and whole models under the CPU emulation
# (test/cuda_emu/run.sh: cuda_ops_check, cuda_train_check at 64x64, then
# cuda_model_check at 32x32), and training from SQL on the emulated device
# (test/gpu_sql_check.sh step 1 in a copy of this PostgreSQL 15).
# Then builds medtl.so with the CUDA backend and both check tools in a
# temporary copy of the sources (the working tree's objects and the installed
# extension are left alone), checks that medtl.so links cuBLAS/cudart and
# exports mt_cuda_backend, and runs test/bin/cuda_ops_check --no-bench and
# test/bin/cuda_model_check --no-bench (small): on a machine without a GPU
# they must say "no CUDA device" and skip cleanly; with one they run the
# whole comparison.  Prints "cuda_build: N passed, M failed"
# (or a skip line when nvcc is absent) and exits 1 on a failure.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
NVCC=${NVCC:-$CUDA_HOME/bin/nvcc}

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok: $*"; }
bad() { failed=$((failed + 1)); echo "FAILED: $*"; }

# The kernels' logic without a GPU: src/cuda built against the CPU emulation
# in test/cuda_emu and compared op by op with the CPU backend.
if command -v g++ >/dev/null 2>&1; then
	# the training check on two models and two settings here (ASan is slow; run.sh alone does more)
	out=$(EMU_ASAN=1 EMU_TRAIN_ARCHS=${EMU_TRAIN_ARCHS:-resnet18,unet_resnet18} EMU_TRAIN_SETTINGS=${EMU_TRAIN_SETTINGS:-045} \
		nice bash "$here/test/cuda_emu/run.sh" 2>&1) && rc=0 || rc=$?
	echo "$out" | grep -E '^(FAIL|cuda_ops:|cuda_train:|cuda_model:)|error' | tail -n 40
	ops=$(echo "$out" | grep -E '^cuda_ops: ' | tail -n 1)
	if [ "$rc" -eq 0 ] && echo "$ops" | grep -Eq '^cuda_ops: [1-9][0-9]* passed, 0 failed$'; then
		ok "CUDA kernels vs the CPU backend under the CPU emulation with ASan ($ops)"
	else
		bad "CUDA kernels under the CPU emulation (test/cuda_emu/run.sh exited $rc)"
	fi
	train=$(echo "$out" | grep -E '^cuda_train: ' | tail -n 1)
	if [ "$rc" -eq 0 ] && echo "$train" | grep -Eq '^cuda_train: [1-9][0-9]* passed, 0 failed$'; then
		ok "a training step on the CUDA backend vs the CPU under the CPU emulation with ASan ($train)"
	else
		bad "the training step under the CPU emulation (test/cuda_emu/run.sh exited $rc)"
	fi
	if [ "$rc" -eq 0 ] && echo "$out" | tail -n 1 | grep -Eq '^cuda_model: [1-9][0-9]* passed, 0 failed$'; then
		ok "whole models on the CUDA backend vs the CPU under the CPU emulation with ASan ($(echo "$out" | tail -n 1))"
	else
		bad "whole models under the CPU emulation (test/cuda_emu/run.sh exited $rc)"
	fi
	# training and cancelling from SQL on the emulated device: medtl.so built
	# on the emulation, in a copy of this machine's PostgreSQL 15 (the
	# installed extension is left alone), test/cuda_emu/train_check.sql's
	# verdicts (test/gpu_sql_check.sh step 1, as on a lent GPU)
	if [ -x /usr/lib/postgresql/15/bin/postgres ] && [ -d "${MEDTL_SHARED:-$here/../shared}/models" ]; then
		sqltmp=$(mktemp -d /tmp/medtl-emu-sql.XXXXXX)
		chmod 755 "$sqltmp"	# the server runs as another user under it
		if nice bash "$here/test/cuda_emu/build_so.sh" "$sqltmp/build" >"$sqltmp/build.log" 2>&1; then
			out=$(GPU_SQL_LOCAL=1 GPU_SQL_MEDTL_SO="$sqltmp/build/medtl.so" GPU_SQL_STEPS=1 \
				GPU_SQL_DIR="$sqltmp/pg" GPU_SQL_PORT=${GPU_SQL_PORT:-5498} OUT="$sqltmp/out" \
				nice bash "$here/test/gpu_sql_check.sh" 2>&1) && rc=0 || rc=$?
			echo "$out" | grep -E '^ *(ok|FAIL|info):|^(PASS|FAIL) ' | tail -n 20
			if [ "$rc" -eq 0 ] && echo "$out" | grep -q '^GPU_SQL_CHECK OK'; then
				ok "training from SQL on the emulated device (test/gpu_sql_check.sh step 1: train_check.sql's verdicts, cancels, memory cap)"
			else
				echo "$out" | tail -n 40
				bad "training from SQL on the emulated device (test/gpu_sql_check.sh exited $rc)"
			fi
		else
			tail -n 30 "$sqltmp/build.log"
			bad "test/cuda_emu/build_so.sh"
		fi
		rm -rf "$sqltmp"
	else
		echo "note: no PostgreSQL 15 server or no ../shared: training from SQL on the emulated device skipped"
	fi
else
	echo "note: no g++; the CPU emulation of the CUDA kernels is skipped"
fi

if [ ! -x "$NVCC" ] && ! command -v nvcc >/dev/null 2>&1; then
	echo "cuda_build: nvcc not found (looked for $NVCC and nvcc on PATH): make WITH_CUDA=1 skipped"
	echo "cuda_build: $passed passed, $failed failed (nvcc build skipped: no nvcc)"
	[ "$failed" -eq 0 ]
	exit
fi
[ -x "$NVCC" ] || NVCC=$(command -v nvcc)

tmp=$(mktemp -d /tmp/medtl-cuda-build.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
(cd "$here" && tar -cf - --exclude='*.o' --exclude='*.bc' --exclude='*.so' \
	Makefile medtl.control sql src test/tools test/unit/mt_test.h) | tar -C "$tmp" -xf -

jobs=${MEDTL_CUDA_BUILD_JOBS:-2}
t0=$(date +%s)
if out=$(cd "$tmp" && nice make -s -j"$jobs" WITH_CUDA=1 NVCC="$NVCC" CUDA_HOME="$CUDA_HOME" 2>&1); then
	ok "make WITH_CUDA=1 builds medtl.so ($(( $(date +%s) - t0 ))s)"
else
	echo "$out" | tail -n 40
	bad "make WITH_CUDA=1"
fi
if [ -f "$tmp/medtl.so" ]; then
	dyn=$(readelf -d "$tmp/medtl.so" 2>&1)
	syms=$(nm -D --defined-only "$tmp/medtl.so" 2>&1)
	if grep -q 'NEEDED.*libcublas' <<<"$dyn" && grep -q 'NEEDED.*libcudart' <<<"$dyn"; then
		ok "medtl.so (CUDA) links libcublas and libcudart"
	else
		bad "medtl.so (CUDA) does not link libcublas/libcudart"
	fi
	if grep -qw mt_cuda_backend <<<"$syms"; then
		ok "medtl.so (CUDA) exports mt_cuda_backend"
	else
		bad "medtl.so (CUDA) lacks mt_cuda_backend"
	fi
fi
if out=$(cd "$tmp" && nice make -s WITH_CUDA=1 NVCC="$NVCC" CUDA_HOME="$CUDA_HOME" cuda-check 2>&1); then
	ok "make WITH_CUDA=1 cuda-check builds test/bin/cuda_ops_check, cuda_model_check and cuda_train_check"
	out=$("$tmp/test/bin/cuda_ops_check" --no-bench 2>&1) && rc=0 || rc=$?
	echo "$out" | grep -E '^(no CUDA device|device:|FAIL|cuda_ops:)' | tail -n 40
	if [ "$rc" -eq 0 ] && echo "$out" | tail -n 1 | grep -q '^cuda_ops: [0-9]* passed, 0 failed'; then
		ok "cuda_ops_check ($(echo "$out" | tail -n 1))"
	else
		bad "cuda_ops_check exited $rc"
	fi
	# without a device: the refusals only; with one: the whole comparison, small
	out=$("$tmp/test/bin/cuda_model_check" --no-bench --size 64 --batch 4 --cpu-batch 2 2>&1) && rc=0 || rc=$?
	echo "$out" | grep -E '^(no CUDA device|device:|FAIL|cuda_model:)' | tail -n 40
	if [ "$rc" -eq 0 ] && echo "$out" | tail -n 1 | grep -q '^cuda_model: [0-9]* passed, 0 failed'; then
		ok "cuda_model_check ($(echo "$out" | tail -n 1))"
	else
		bad "cuda_model_check exited $rc"
	fi
	out=$("$tmp/test/bin/cuda_train_check" --no-bench --size 64 --batch 4 --archs resnet18 2>&1) && rc=0 || rc=$?
	echo "$out" | grep -E '^(no CUDA device|device:|FAIL|cuda_train:)' | tail -n 40
	if [ "$rc" -eq 0 ] && echo "$out" | tail -n 1 | grep -q '^cuda_train: [0-9]* passed, 0 failed'; then
		ok "cuda_train_check ($(echo "$out" | tail -n 1))"
	else
		bad "cuda_train_check exited $rc"
	fi
else
	echo "$out" | tail -n 40
	bad "make WITH_CUDA=1 cuda-check"
fi
echo "cuda_build: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
