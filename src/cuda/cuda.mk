# src/cuda/cuda.mk - CUDA build rules, included by the top-level Makefile
# (PGXS) and usable on its own without PostgreSQL:
#
#   make -f src/cuda/cuda.mk cuda-check     builds test/bin/cuda_ops_check,
#                                           cuda_model_check and cuda_train_check
#
# nvcc compiles src/cuda/*.cu for sm_90 plus compute_90 PTX (override with
# CUDA_ARCH=...).  The objects are linked into medtl.so through SHLIB_LINK,
# not OBJS, so PGXS does not look for LLVM bitcode of them.

CUDA_HOME ?= /usr/local/cuda
NVCC ?= $(CUDA_HOME)/bin/nvcc
# where cublas_v2.h / cuda_runtime_api.h and libcublas.so / libcudart.so are
CUDA_INCDIR ?= $(CUDA_HOME)/include
CUDA_LIBDIR ?= $(CUDA_HOME)/lib64
CUDA_ARCH ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
CUDA_WARN = -Wall,-Wextra,-Wno-unused-parameter,-Wno-sign-compare,-Wno-missing-field-initializers,-Werror
NVCCFLAGS = -O3 -std=c++20 $(CUDA_ARCH) -Xcompiler -fPIC,$(CUDA_WARN) -Isrc -I$(CUDA_INCDIR) -DMEDTL_CUDA
CUDA_OBJS = src/cuda/cuda_runtime.o src/cuda/ops_cuda.o
CUDA_LIBS = -L$(CUDA_LIBDIR) -Wl,-rpath,$(CUDA_LIBDIR) -lcublas -lcudart -lstdc++
CUDA_HDRS = src/cuda/cuda.h src/cuda/cuda_internal.h src/core/ops.h src/core/mt_common.h

src/cuda/%.o: src/cuda/%.cu $(CUDA_HDRS)
	$(NVCC) $(NVCCFLAGS) -c -o $@ $<

# The op-by-op CUDA vs CPU check: only the CPU kernels it compares against,
# no PostgreSQL, no image libraries.
CUDA_CHECK_SRC = src/core/mt_common.c src/core/blas.c src/core/onednn.c src/core/pool.c \
	src/core/ops_cpu.c src/core/ops_cpu_train.c src/core/ops_cpu_vit.c src/core/ops_cpu_cnn.c \
	src/core/ops_cpu_unet.c src/io/augment.c
CUDA_CHECK_CFLAGS = -std=gnu11 -O2 -g -Wall -Wextra -Wno-unused-parameter \
	-Wno-sign-compare -Wno-missing-field-initializers -Werror -Isrc -I$(CUDA_INCDIR) -DMEDTL_CUDA

test/bin/cuda_ops_check: test/tools/cuda_ops_check.c $(CUDA_CHECK_SRC) $(CUDA_OBJS) $(CUDA_HDRS)
	@mkdir -p test/bin
	$(CC) $(CUDA_CHECK_CFLAGS) -o $@ $< $(CUDA_CHECK_SRC) $(CUDA_OBJS) $(CUDA_LIBS) -ldl -lm -lpthread

# The whole-model CUDA vs CPU check: the engine (graph, zoo) without
# PostgreSQL or image libraries.
CUDA_MODEL_SRC = $(CUDA_CHECK_SRC) src/core/graph.c src/core/graph_vit.c src/core/train.c \
	src/nn/zoo.c src/nn/zoo_cnn.c src/nn/unet.c src/nn/vit.c

test/bin/cuda_model_check: test/tools/cuda_model_check.c $(CUDA_MODEL_SRC) $(CUDA_OBJS) $(CUDA_HDRS) \
		src/core/graph.h src/core/train.h src/nn/zoo.h test/tools/cuda_check_common.h
	@mkdir -p test/bin
	$(CC) $(CUDA_CHECK_CFLAGS) -o $@ $< $(CUDA_MODEL_SRC) $(CUDA_OBJS) $(CUDA_LIBS) -ldl -lm -lpthread

# One training step on the device against the CPU, and training images/s.
test/bin/cuda_train_check: test/tools/cuda_train_check.c $(CUDA_MODEL_SRC) $(CUDA_OBJS) $(CUDA_HDRS) \
		src/core/graph.h src/core/train.h src/nn/zoo.h test/tools/cuda_check_common.h
	@mkdir -p test/bin
	$(CC) $(CUDA_CHECK_CFLAGS) -o $@ $< $(CUDA_MODEL_SRC) $(CUDA_OBJS) $(CUDA_LIBS) -ldl -lm -lpthread

# test/tools/train_step.c on the device (MEDTL_DEVICE=cuda): the PyTorch
# parity of one training step (test/parity_train.py, MEDTL_TRAIN_STEP names it)
test/bin/cuda_train_step: test/tools/train_step.c $(CUDA_MODEL_SRC) src/io/safetensors.c $(CUDA_OBJS) \
		$(CUDA_HDRS) src/core/graph.h src/core/train.h src/nn/zoo.h src/io/safetensors.h test/unit/mt_test.h
	@mkdir -p test/bin
	$(CC) $(CUDA_CHECK_CFLAGS) -Itest/unit -o $@ $< $(CUDA_MODEL_SRC) src/io/safetensors.c $(CUDA_OBJS) \
		$(CUDA_LIBS) -ldl -lm -lpthread

cuda-check: test/bin/cuda_ops_check test/bin/cuda_model_check test/bin/cuda_train_check test/bin/cuda_train_step

.PHONY: cuda-check

# cuda_train_check as a shared library, for test/gpu_profile.py (its main()
# run under torch.profiler, which sees every kernel of the process)
test/bin/cuda_train_check.so: test/tools/cuda_train_check.c $(CUDA_MODEL_SRC) $(CUDA_OBJS) $(CUDA_HDRS) \
		src/core/graph.h src/core/train.h src/nn/zoo.h test/tools/cuda_check_common.h
	@mkdir -p test/bin
	$(CC) $(CUDA_CHECK_CFLAGS) -fPIC -shared -o $@ $< $(CUDA_MODEL_SRC) $(CUDA_OBJS) $(CUDA_LIBS) -ldl -lm -lpthread
