#!/usr/bin/env bash
# require_disk.sh GIB DIR WHAT: stop with a clear message, before a large install starts, when the file system
# holding DIR (or its nearest existing parent) has less than GIB GiB free. A full disk half-way through pip or
# apt leaves a broken venv or root and an error that names a package, not the disk.
set -euo pipefail
need_gib=$1 dir=$2 what=$3
while [ ! -e "$dir" ]; do dir=$(dirname "$dir"); done
free_kib=$(df -Pk "$dir" | awk 'NR == 2 {print $4}')
if [ "$free_kib" -lt $((need_gib * 1024 * 1024)) ]; then
  printf '!! %s needs about %s GiB free on the disk holding %s; %s GiB are free.\n' \
    "$what" "$need_gib" "$(realpath "$dir")" "$(awk -v k="$free_kib" 'BEGIN {printf "%.1f", k / 1048576}')" >&2
  echo "!! Free some space (or point it elsewhere) and run the same command again." >&2
  exit 1
fi
