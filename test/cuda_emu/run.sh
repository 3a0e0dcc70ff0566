#!/usr/bin/env bash
# test/cuda_emu/run.sh - build src/cuda's kernels and host code against the CPU
# emulation in this folder (g++, C++20) and run test/bin/cuda_ops_check's
# comparison with the CPU backend, then test/bin/cuda_model_check's
# whole-model comparison at a tiny size (32x32, device batch 3, CPU batch 2, every CNN of
# the zoo: the emulation runs kernels thread by thread).  No GPU or CUDA toolkit
# needed.  Prints the tools' lines: "cuda_ops: N passed, M failed", then
# "cuda_train: N passed, M failed" (one training step, test/tools/cuda_train_check.c,
# at 64x64 batch 4: at 32x32 the last stage has 1x1 positions and batch
# statistics of 4 values amplify rounding), last "cuda_model: N passed, M failed"; exits 1 on a failure.
# EMU_MODEL_ARCHS overrides the architectures of the model check (the default
# list ends with vit_b_16: at 32x32 its position embedding is resized),
# EMU_MODEL_SIZE its "--size S --batch B --cpu-batch C" (vit_b_16 at 224
# runs the stored grid: "--size 224 --batch 1 --cpu-batch 1", minutes);
# EMU_SKIP_OPS=1 skips the op check, EMU_SKIP_TRAIN=1 the training check;
# EMU_TRAIN_ARCHS overrides the training check's architectures.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
emu=$here/test/cuda_emu
tmp=$(mktemp -d /tmp/medtl-cuda-emu.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
CXX=${CXX:-g++}
# EMU_ASAN=1: AddressSanitizer over the kernels (device memory is host memory here)
san=${EMU_ASAN:+-fsanitize=address -fno-omit-frame-pointer}
CC=${CC:-gcc}
# the CPU reference is im2col + GEMM: oneDNN's OpenMP threads, alive at exit,
# stop LeakSanitizer (EMU_ASAN=1) from suspending the process ("fatal error")
export MEDTL_CONV_KERNELS=gemm
flags="$san -std=c++20 -O1 -ffp-contract=off -Wall -Wno-unused-parameter -Wno-sign-compare -Werror -I$emu/inc -I$here/src -DMEDTL_CUDA"
python3 "$emu/launches.py" "$here/src/cuda/ops_cuda.cu" "$tmp/ops_cuda.cpp"
cp "$here/src/cuda/cuda_runtime.cu" "$tmp/cuda_runtime.cpp"
$CXX $flags -c "$tmp/ops_cuda.cpp" -o "$tmp/ops_cuda.o"
$CXX $flags -c "$tmp/cuda_runtime.cpp" -o "$tmp/cuda_runtime.o"
$CXX $flags -c "$emu/emu.cpp" -o "$tmp/emu.o"
# the CPU kernels the op check compares against, and the engine for the model checks
ops_src=(mt_common blas onednn pool ops_cpu ops_cpu_train ops_cpu_vit ops_cpu_cnn ops_cpu_unet)
ops_src=("${ops_src[@]/#/$here/src/core/}")
ops_src=("${ops_src[@]/%/.c}" "$here/src/io/augment.c")
model_src=("${ops_src[@]}" "$here/src/core/graph.c" "$here/src/core/graph_vit.c" "$here/src/core/train.c"
	"$here/src/nn/zoo.c" "$here/src/nn/zoo_cnn.c" "$here/src/nn/unet.c" "$here/src/nn/vit.c")
# link_tool NAME SOURCES...: test/tools/NAME.c with the sources, the kernels and the emulation
link_tool() {
	local name=$1
	shift
	$CC $san -std=gnu11 -O1 -Wall -Wextra -Wno-unused-parameter -Wno-sign-compare -Wno-missing-field-initializers -Werror \
		-I"$emu/inc" -I"$here/src" -DMEDTL_CUDA -o "$tmp/$name" "$here/test/tools/$name.c" "$@" \
		"$tmp/ops_cuda.o" "$tmp/cuda_runtime.o" "$tmp/emu.o" -lstdc++ -ldl -lm -lpthread
}
link_tool cuda_ops_check "${ops_src[@]}"
[ -n "${EMU_SKIP_OPS:-}" ] || "$tmp/cuda_ops_check" --no-bench
link_tool cuda_model_check "${model_src[@]}"
link_tool cuda_train_check "${model_src[@]}"
# one training step on the device vs the CPU (SGD / AdamW, full / frozen backbone)
[ -n "${EMU_SKIP_TRAIN:-}" ] || "$tmp/cuda_train_check" --no-bench ${EMU_TRAIN_SIZE:---size 64 --batch 4} \
	--settings "${EMU_TRAIN_SETTINGS:-01345}" \
	--archs "${EMU_TRAIN_ARCHS:-resnet18,mobilenet_v2,unet_resnet18}"
# the device-less path first (the probe fails: refusal, host still works)
EMU_NODEV=1 "$tmp/cuda_model_check" --no-bench --size 32 --batch 3 --cpu-batch 2 --archs resnet18 | tail -n 3
"$tmp/cuda_model_check" --no-bench ${EMU_MODEL_SIZE:---size 32 --batch 3 --cpu-batch 2} \
	--archs "${EMU_MODEL_ARCHS:-resnet18,resnet34,resnet50,mobilenet_v2,densenet121,efficientnet_b0,unet_resnet18,unet_mobilenet_v2,unet_mobilenet_v2_tconv,vit_b_16}"
