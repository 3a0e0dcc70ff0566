#!/usr/bin/env bash
# verify.sh NAME FILE - check FILE's sha256 against models/catalog.csv
set -euo pipefail
name=$1 file=$2
here=$(cd "$(dirname "$0")" && pwd)
want=$(awk -F, -v n="$name" 'NR > 1 && $1 == n { print $4 }' "$here/catalog.csv")
if [ -z "$want" ]; then echo "verify: no backbone \"$name\" in catalog.csv" >&2; exit 2; fi
got=$(sha256sum "$file" | cut -d' ' -f1)
if [ "$got" != "$want" ]; then
	echo "verify: $file has sha256 $got, catalog.csv expects $want" >&2; exit 1
fi
echo "verify: $file matches $name ($got)"
