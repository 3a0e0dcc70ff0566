#!/usr/bin/env bash
# verify.sh NAME FILE - check FILE's sha256 against models/catalog.csv
# (MEDTL_CATALOG=/path/to/catalog.csv reads another catalogue).
#
# A 64-digit sha256 is compared in full.  For torchvision's files the
# catalogue holds only the hex prefix that torchvision puts in the file name
# (resnet18-f37072fd.pth: the sha256 starts with f37072fd, which is what
# torch.hub checks too); then only that prefix is compared, and this script
# says so.
set -euo pipefail
if [ $# -ne 2 ]; then echo "usage: $0 NAME FILE" >&2; exit 2; fi
name=$1 file=$2
here=$(cd "$(dirname "$0")" && pwd)
catalog=${MEDTL_CATALOG:-$here/catalog.csv}
want=$(awk -F, -v n="$name" 'NR > 1 && $1 == n { print $4 }' "$catalog")
if [ -z "$want" ]; then echo "verify: no backbone \"$name\" in $catalog" >&2; exit 2; fi
if ! [[ "$want" =~ ^[0-9a-f]{8,64}$ ]]; then
	echo "verify: catalogue sha256 of \"$name\" is not lower-case hex: \"$want\"" >&2; exit 2
fi
if [ ! -f "$file" ]; then echo "verify: no file $file" >&2; exit 2; fi
got=$(sha256sum "$file" | cut -d' ' -f1)
if [ "${got:0:${#want}}" != "$want" ]; then
	echo "verify: $file has sha256 $got, catalog.csv expects ${want}$([ ${#want} -lt 64 ] && echo '...')" >&2
	exit 1
fi
if [ ${#want} -lt 64 ]; then
	echo "verify: $file matches $name on the ${#want}-digit sha256 prefix $want only (the catalogue has no full checksum); sha256 is $got"
else
	echo "verify: $file matches $name ($got)"
fi
