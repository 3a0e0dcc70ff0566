#!/usr/bin/env bash
# test/gpu_prepare_sql.sh - run here (Debian 12, PostgreSQL 15, CUDA toolkit)
# before lending a GPU machine for test/gpu_sql_check.sh: the lent machine
# has no PostgreSQL, no OpenBLAS and no ../shared, so this packs what the
# check needs into .gpu/sql/bundle.tar.xz (ignored by git):
#   - medtl built with WITH_CUDA=1 from this working tree, installed with
#     DESTDIR into a copy of Debian's PostgreSQL 15 (server, initdb, pg_ctl,
#     psql and its share/ tree).  PostgreSQL finds its share and lib
#     directories relative to its binaries, so the tree runs wherever it is
#     unpacked;
#   - every shared library those programs and OpenBLAS need that is not
#     glibc's, the C++ runtime's or CUDA's (the lent machine has its own);
#   - from ../shared: the ImageNet MobileNetV2, PneumoniaMNIST, BreastMNIST,
#     the 24 chest X-rays that pg_regress's setup reads and the first 16
#     Kvasir-SEG training pairs (train_check.sql's U-Net uses 12).
# Carry ".gpu/sql" with the device command (the bundle stays under 64 MiB).
#
#   bash test/gpu_prepare_sql.sh        (MEDTL_SHARED: ../shared by default)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared=$(cd "${MEDTL_SHARED:-$here/../shared}" && pwd)
pgbin=/usr/lib/postgresql/15/bin
openblas=${MEDTL_OPENBLAS:-/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0}
dest=$here/.gpu/sql
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage=$work/stage
root=$stage/root

for f in "$pgbin/postgres" "$pgbin/initdb" "$pgbin/pg_ctl" "$pgbin/psql" "$openblas"; do
	[ -e "$f" ] || { echo "gpu_prepare_sql: $f is missing" >&2; exit 1; }
done

# 1. medtl with the CUDA backend, built from the working tree (tracked files
#    plus untracked ones git does not ignore), installed under $root
echo "gpu_prepare_sql: building medtl with WITH_CUDA=1"
mkdir -p "$work/src"
(cd "$here" && git ls-files -z --cached --others --exclude-standard |
	xargs -0 -I{} sh -c '[ -f "{}" ] && cp --parents "{}" "'"$work/src"'" || true')
make -s -C "$work/src" WITH_CUDA=1 -j"$(nproc)" >/dev/null
make -s -C "$work/src" WITH_CUDA=1 install DESTDIR="$root" >/dev/null

# 2. PostgreSQL 15: the four programs, the server's modules it loads
#    (plpgsql, dict_snowball for initdb) and its share tree
mkdir -p "$root/usr/lib/postgresql/15/bin" "$root/usr/share/postgresql"
cp -L "$pgbin/postgres" "$pgbin/initdb" "$pgbin/pg_ctl" "$pgbin/psql" "$root/usr/lib/postgresql/15/bin/"
cp -L /usr/lib/postgresql/15/lib/plpgsql.so /usr/lib/postgresql/15/lib/dict_snowball.so \
	"$root/usr/lib/postgresql/15/lib/"
rm -rf "$root/usr/lib/postgresql/15/lib/bitcode"
# the share tree, with medtl's extension files that DESTDIR put there kept
cp -a -n /usr/share/postgresql/15 "$root/usr/share/postgresql/"

# 3. shared libraries: the closure of the programs, the modules and OpenBLAS
mkdir -p "$stage/lib"
cp -L "$openblas" "$stage/lib/libopenblas.so.0"
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libpthread|libdl\.so|librt\.so|libresolv|libutil|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libnvidia)'
for elf in "$root"/usr/lib/postgresql/15/bin/* "$root"/usr/lib/postgresql/15/lib/*.so "$openblas"; do
	ldd "$elf" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }' | while read -r name path; do
		if ! [[ $name =~ $skip ]] && [ ! -e "$stage/lib/$name" ]; then
			cp -L "$path" "$stage/lib/$name"
		fi
	done
done
# medtl.so must resolve everything but CUDA's libraries here too
if ldd "$root/usr/lib/postgresql/15/lib/medtl.so" | grep 'not found' | grep -v -E 'libcu(blas|dart)'; then
	echo "gpu_prepare_sql: medtl.so has unresolved libraries" >&2
	exit 1
fi

# 4. data from ../shared
sd=$stage/shared
mkdir -p "$sd/models" "$sd/data/chest_xray"
cp -a "$shared/models/mobilenet_v2_imagenet" "$sd/models/"
cp -a "$shared/data/pneumoniamnist" "$shared/data/breastmnist" "$sd/data/"
cp "$shared/data/chest_xray/manifest.csv" "$sd/data/chest_xray/"
# the 24 test X-rays sql/setup.sql reads: the first 12 of each label by path
python3 - "$shared/data/chest_xray" "$sd/data/chest_xray" <<'EOF'
import csv, os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
rows = [r for r in csv.DictReader(open(os.path.join(src, "manifest.csv"))) if r["split"] == "test"]
for label in sorted({r["label"] for r in rows}):
    for r in sorted((r for r in rows if r["label"] == label), key=lambda r: r["path"])[:12]:
        os.makedirs(os.path.dirname(os.path.join(dst, r["path"])), exist_ok=True)
        shutil.copy(os.path.join(src, r["path"]), os.path.join(dst, r["path"]))
EOF
# Kvasir-SEG's manifest and the first training pairs by image name (train_check.sql's U-Net reads 12)
mkdir -p "$sd/data/kvasir_seg"
cp "$shared/data/kvasir_seg/manifest.csv" "$sd/data/kvasir_seg/"
python3 - "$shared/data/kvasir_seg" "$sd/data/kvasir_seg" <<'EOF'
import csv, os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
rows = sorted((r for r in csv.DictReader(open(os.path.join(src, "manifest.csv"))) if r["split"] == "train"),
              key=lambda r: r["image"])[:16]
for r in rows:
    for f in (r["image"], r["mask"]):
        os.makedirs(os.path.dirname(os.path.join(dst, f)), exist_ok=True)
        shutil.copy(os.path.join(src, f), os.path.join(dst, f))
EOF
chmod -R u+rwX,go+rX "$stage"

mkdir -p "$dest"
rm -f "$dest/bundle.tar.xz"
tar -C "$stage" -cf - . | xz -T0 -6 > "$dest/bundle.tar.xz"
du -sh --apparent-size "$stage" "$dest/bundle.tar.xz"
echo "gpu_prepare_sql: ready; carry \".gpu/sql\" and run: bash test/gpu_sql_check.sh"
