#!/usr/bin/env bash
# fetch.sh NAME [options] - download a backbone of models/catalog.csv, check
# its sha256 (models/verify.sh) and register it with medtl.import_model_file.
#
#   models/fetch.sh resnet18_imagenet1k_v1
#   models/fetch.sh resnet50_imagenet1k_v1 --labels ../shared/models/mobilenet_v2_imagenet/labels.txt
#   models/fetch.sh resnet18_imagenet1k_v1 --from /media/usb/resnet18-f37072fd.pth   # no internet here
#
# Options:
#   --from URL|PATH   take the file from here instead of the catalogue's URL
#                     (a local path or a file:// URL is copied, not downloaded)
#   --dest DIR        where the file is kept (default: $MEDTL_MODELS or
#                     ./models/downloads); it must be readable by the server,
#                     which reads it with medtl.import_model_file
#   --model NAME      name of the model in medtl.models (default: NAME)
#   --labels FILE     class labels, one per line
#   --replace         replace a model of that name
#   --no-import       download and verify only
# Environment: PGHOST, PGPORT, PGUSER, PGDATABASE as for psql;
# MEDTL_CATALOG reads another catalogue file; PSQL names the psql binary.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
catalog=${MEDTL_CATALOG:-$here/catalog.csv}
die() { echo "fetch: $*" >&2; exit 1; }
usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 1 ] || usage
name=$1; shift
from="" dest=${MEDTL_MODELS:-$PWD/models/downloads} model=$name labels="" replace=false import=true
while [ $# -gt 0 ]; do
	case "$1" in
		--from) from=$2; shift 2 ;;
		--dest) dest=$2; shift 2 ;;
		--model) model=$2; shift 2 ;;
		--labels) labels=$2; shift 2 ;;
		--replace) replace=true; shift ;;
		--no-import) import=false; shift ;;
		-h|--help) usage ;;
		*) echo "fetch: unknown option $1" >&2; usage ;;
	esac
done

row=$(awk -F, -v n="$name" 'NR > 1 && $1 == n' "$catalog")
if [ -z "$row" ]; then
	echo "fetch: no backbone \"$name\" in $catalog; known:" >&2
	awk -F, 'NR > 1 { print "  " $1 " (" $2 ")" }' "$catalog" >&2
	exit 2
fi
IFS=, read -r _ arch file _sha _source _license mean std input_size padding _classes url <<<"$row"
[ -n "$from" ] || from=$url
[ -n "$from" ] || die "the catalogue has no URL for \"$name\"; pass --from PATH"

mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
target=$dest/$file
part=$target.part
rm -f "$part"
case "$from" in
	file://*) src=${from#file://}
		cp -- "$src" "$part" 2>/dev/null || die "cannot read $src" ;;
	http://*|https://*)
		echo "fetch: downloading $from"
		if command -v curl >/dev/null; then
			curl -fL --retry 2 --connect-timeout 20 -o "$part" "$from" ||
				{ rm -f "$part"; die "could not download $from (no internet access?). Download $file on a machine that has it and run: $0 $name --from /path/to/$file"; }
		elif command -v wget >/dev/null; then
			wget -q --tries=2 --timeout=20 -O "$part" "$from" ||
				{ rm -f "$part"; die "could not download $from (no internet access?). Download $file on a machine that has it and run: $0 $name --from /path/to/$file"; }
		else
			die "neither curl nor wget is installed to download $from. Download $file elsewhere and run: $0 $name --from /path/to/$file"
		fi ;;
	*) cp -- "$from" "$part" 2>/dev/null || die "cannot read $from" ;;
esac

if ! MEDTL_CATALOG=$catalog "$here/verify.sh" "$name" "$part"; then
	mv -f "$part" "$target.bad"
	die "refusing $from: its sha256 does not match the catalogue (kept as $target.bad)"
fi
mv -f "$part" "$target"
chmod 644 "$target"
echo "fetch: $target"
$import || exit 0

# one psql call: the file is read by the server (medtl.import_model_file)
q() { printf "'%s'" "${1//\'/\'\'}"; }
labels_sql=NULL
if [ -n "$labels" ]; then
	[ -f "$labels" ] || die "no labels file $labels"
	labels_sql="string_to_array(rtrim($(q "$(cat "$labels")"), E'\\n'), E'\\n')"
fi
sql="SELECT medtl.import_model_file($(q "$model"), $(q "$arch"), $(q "$target"),
    labels => $labels_sql, input_size => $input_size,
    mean => string_to_array($(q "$mean"), ' ')::real[], std => string_to_array($(q "$std"), ' ')::real[],
    padding => $(q "$padding"), replace => $replace) AS model_id"
${PSQL:-psql} -X -v ON_ERROR_STOP=1 -At -c "$sql" >/dev/null ||
	die "import into PostgreSQL failed (see the error above)"
echo "fetch: registered \"$model\" ($arch) from $target"
