#!/usr/bin/env bash
# test/gpu_prepare.sh - run here (Debian, before lending a GPU machine):
# copies OpenBLAS and its non-glibc dependencies into .gpu/lib (ignored by
# git) so the lent machine, which has no OpenBLAS, can load it for the CPU
# reference of test/gpu_check.sh.  Carry ".gpu" with the device command.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src=${MEDTL_OPENBLAS:-/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0}
dest=$here/.gpu/lib

if [ ! -f "$src" ]; then
	echo "gpu_prepare: no OpenBLAS at $src (apt-get install libopenblas0-pthread, or set MEDTL_OPENBLAS)" >&2
	exit 1
fi
mkdir -p "$dest"
cp -L "$src" "$dest/libopenblas.so.0"
# its dependencies that a machine without gfortran may lack
for lib in libgfortran.so.5 libquadmath.so.0; do
	path=$(ldd "$src" | awk -v l="$lib" '$1 == l { print $3 }')
	if [ -z "$path" ] || [ ! -f "$path" ]; then
		echo "gpu_prepare: ldd does not resolve $lib for $src" >&2
		exit 1
	fi
	cp -L "$path" "$dest/$lib"
done
chmod 644 "$dest"/*
du -sh "$dest"
ls -l "$dest"
echo "gpu_prepare: ready; carry \".gpu\" with the device command (it must stay under 64 MiB)"
