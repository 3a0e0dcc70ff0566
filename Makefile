# medtl - transfer learning on medical images inside PostgreSQL (PGXS build)

EXTENSION = medtl
EXTVERSION = 0.1.0

MODULE_big = medtl
OBJS = \
	src/core/mt_common.o \
	src/core/blas.o \
	src/core/onednn.o \
	src/core/pool.o \
	src/core/adapt.o \
	src/core/ops_cpu.o \
	src/core/graph.o \
	src/core/train.o \
	src/core/ops_cpu_train.o \
	src/core/ops_cpu_vit.o \
	src/core/graph_vit.o \
	src/core/ops_cpu_cnn.o \
	src/core/ops_cpu_unet.o \
	src/core/metrics.o \
	src/core/tiling.o \
	src/nn/zoo.o \
	src/nn/zoo_cnn.o \
	src/nn/unet.o \
	src/nn/vit.o \
	src/io/image.o \
	src/io/safetensors.o \
	src/io/pth.o \
	src/io/augment.o \
	src/io/mask.o \
	src/pg/medtl.o \
	src/pg/device.o \
	src/pg/weights.o \
	src/pg/model.o \
	src/pg/metrics.o \
	src/pg/seg_metrics.o \
	src/pg/dataset.o \
	src/pg/train.o \
	src/pg/segment.o

# make WITH_CUDA=1: the CUDA backend (src/cuda/*.cu through nvcc, cuBLAS);
# otherwise a C stub answers the same API with "built without CUDA".
# (rules and flags in src/cuda/cuda.mk, included after PGXS).
ifeq ($(WITH_CUDA),1)
PG_CPPFLAGS_CUDA = -DMEDTL_CUDA
else
OBJS += src/cuda/cuda_stub.o
endif

DATA = sql/$(EXTENSION)--$(EXTVERSION).sql

# pg_regress suites, one per feature (sql/NAME.sql, expected/NAME.out)
REGRESS = setup images import pth predict evaluate train ensemble export bad_input privileges zoo_cnn segmentation_metrics segmentation device
REGRESS_OPTS = --inputdir=. --load-extension=plpgsql

OPTFLAGS = -O3
WARNFLAGS = -Wall -Wextra -Wno-unused-parameter -Wno-sign-compare \
	-Wno-missing-field-initializers -Werror
PG_CPPFLAGS = -Isrc -DMEDTL_VERSION=\"$(EXTVERSION)\" $(PG_CPPFLAGS_CUDA)
PG_CFLAGS = -std=gnu11 $(OPTFLAGS) $(WARNFLAGS)
# OpenBLAS is dlopen()ed at first use (src/core/blas.c), not linked.
SHLIB_LINK = -ljpeg -lpng -lz -ldl -lm -lpthread
ifeq ($(WITH_CUDA),1)
SHLIB_LINK += $(CUDA_OBJS) $(CUDA_LIBS)
endif

EXTRA_CLEAN = test/bin results regression.diffs regression.out src/cuda/*.o

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# Install the library as a new file rather than rewriting the old one in
# place (install(1) keeps the inode): a backend that has medtl loaded keeps
# running on the old file instead of crashing when its mapped code changes.
install-lib-shared: unlink-installed-module
unlink-installed-module:
	rm -f '$(DESTDIR)$(pkglibdir)/$(MODULE_big)$(DLSUFFIX)'
.PHONY: unlink-installed-module

# PGXS tracks no header dependencies: rebuild every object when any header
# changes (a stale object with an old struct layout is a silent bug)
$(OBJS): $(wildcard src/*/*.h)

ifeq ($(WITH_CUDA),1)
include src/cuda/cuda.mk
$(shlib): $(CUDA_OBJS)
endif

# --- engine unit tests (no PostgreSQL): make unittest -----------------------
ENGINE_SRC = src/cuda/cuda_stub.c src/core/mt_common.c src/core/blas.c src/core/onednn.c src/core/pool.c src/core/adapt.c src/core/ops_cpu.c \
	src/core/train.c src/core/ops_cpu_train.c src/io/augment.c src/io/mask.c \
	src/core/graph.c src/core/metrics.c src/core/tiling.c src/nn/zoo.c src/nn/zoo_cnn.c src/nn/unet.c src/core/ops_cpu_cnn.c src/core/ops_cpu_unet.c src/io/image.c src/io/safetensors.c src/io/pth.c \
	src/core/ops_cpu_vit.c src/core/graph_vit.c src/nn/vit.c
UNIT_TESTS = $(patsubst test/unit/%.c,test/bin/%,$(wildcard test/unit/test_*.c))
UNIT_CFLAGS = -std=gnu11 -O2 -g $(WARNFLAGS) -Isrc -Itest/unit

test/bin/%: test/unit/%.c $(ENGINE_SRC) $(wildcard src/*/*.h) $(wildcard test/unit/*.h)
	@mkdir -p test/bin
	$(CC) $(UNIT_CFLAGS) -o $@ $< $(ENGINE_SRC) -ljpeg -lpng -lz -ldl -lm -lpthread

# the same engine built as if libdnnl-dev were absent (im2col + GEMM only):
# the fallback must compile, link and train right
UNIT_TESTS += test/bin/test_grad_nodnnl
test/bin/test_grad_nodnnl: test/unit/test_grad.c $(ENGINE_SRC) $(wildcard src/*/*.h) $(wildcard test/unit/*.h)
	@mkdir -p test/bin
	$(CC) $(UNIT_CFLAGS) -DMT_NO_ONEDNN -o $@ $< $(ENGINE_SRC) -ljpeg -lpng -lz -ldl -lm -lpthread

unittest: $(UNIT_TESTS)

# fuzz targets built as replay drivers with the system compiler
FUZZ_TARGETS = $(patsubst test/fuzz/fuzz_%.c,test/bin/fuzz_%,$(filter-out test/fuzz/fuzz_main.c,$(wildcard test/fuzz/fuzz_*.c)))
test/bin/fuzz_%: test/fuzz/fuzz_%.c test/fuzz/fuzz_main.c $(ENGINE_SRC)
	@mkdir -p test/bin
	$(CC) $(UNIT_CFLAGS) -fsanitize=address,undefined -fno-sanitize-recover=all -o $@ $< test/fuzz/fuzz_main.c $(ENGINE_SRC) -ljpeg -lpng -lz -ldl -lm -lpthread

fuzz: $(FUZZ_TARGETS)

.PHONY: unittest fuzz

# --- command-line tools over the engine (benchmarks, parity drivers): make tools
TOOLS = $(patsubst test/tools/%.c,test/bin/%,$(filter-out test/tools/cuda_%.c,$(wildcard test/tools/*.c)))
ifeq ($(WITH_CUDA),1)
TOOLS += test/bin/cuda_ops_check test/bin/cuda_model_check test/bin/cuda_train_check test/bin/cuda_train_step
endif
test/bin/%: test/tools/%.c $(ENGINE_SRC) $(wildcard src/*/*.h) $(wildcard test/unit/*.h)
	@mkdir -p test/bin
	$(CC) $(UNIT_CFLAGS) -O3 -o $@ $< $(ENGINE_SRC) -ljpeg -lpng -lz -ldl -lm -lpthread

tools: $(TOOLS)

.PHONY: tools
