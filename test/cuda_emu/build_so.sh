#!/usr/bin/env bash
# test/cuda_emu/build_so.sh DIR - medtl.so with the CUDA backend built
# against the CPU emulation in this folder (g++; no GPU, no CUDA toolkit
# needed), in a copy of the sources at DIR, for checking the SQL side of
# the device paths (medtl.device = cuda: scoring, train, fine_tune) on a
# machine without a GPU.  Kernels run thread by thread: a resnet18 step at
# 64x64, batch 9, takes seconds.  Testing only.
#
#   bash test/cuda_emu/build_so.sh /tmp/medtl-emu
#   make -C /tmp/medtl-emu install WITH_CUDA=1 NVCC=/bin/false \
#        CUDA_INCDIR=/tmp/medtl-emu/test/cuda_emu/inc CUDA_LIBS="/tmp/medtl-emu/emu.o -lstdc++"
#
# The second command REPLACES the installed extension library (a dev
# cluster only; `make install` from the checkout puts the real one back).
# runtime_info()->>'cuda_device' then says "CPU emulation".
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dir=${1:?usage: build_so.sh DIR}
mkdir -p "$dir"
(cd "$here" && git ls-files -z | xargs -0 tar -cf -) | tar -C "$dir" -xf -
# the working tree's changes, not only what is committed
changed=$(cd "$here" && git diff --name-only --diff-filter=d HEAD)
[ -z "$changed" ] || (cd "$here" && tar -cf - $changed) | tar -C "$dir" -xf -
cd "$dir"
flags="-fPIC -std=c++20 -O2 -ffp-contract=off -Wall -Wno-unused-parameter -Wno-sign-compare -Werror"
flags="$flags -Itest/cuda_emu/inc -Isrc -DMEDTL_CUDA"
python3 test/cuda_emu/launches.py src/cuda/ops_cuda.cu ops_cuda_emu.cpp
cp src/cuda/cuda_runtime.cu cuda_runtime_emu.cpp
g++ $flags -c ops_cuda_emu.cpp -o src/cuda/ops_cuda.o
g++ $flags -c cuda_runtime_emu.cpp -o src/cuda/cuda_runtime.o
g++ $flags -c test/cuda_emu/emu.cpp -o emu.o
touch src/cuda/ops_cuda.o src/cuda/cuda_runtime.o
make -s -j"$(nproc)" WITH_CUDA=1 NVCC=/bin/false CUDA_INCDIR="$dir/test/cuda_emu/inc" \
	CUDA_LIBS="$dir/emu.o -lstdc++"
nm -D --defined-only medtl.so > nm.txt && grep -q ' mt_cuda_backend$' nm.txt
echo "build_so: $dir/medtl.so (CUDA backend on the CPU emulation)"
