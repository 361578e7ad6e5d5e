#!/usr/bin/env bash
# Trains and evaluates from scratch on a public dataset and ends with one result line:
#   NAME HR@10=… NDCG@10=… HR@50=… NDCG@50=… epochs=… seconds=…
# Usage: bench/quality.sh beauty|ml-100k|ml-100k-notime [extra genrec train options]
# Data comes from $GENREC_DATA (default: ../shared/data next to the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: bench/quality.sh beauty|ml-100k|ml-100k-notime [options]}
shift
data_root=${GENREC_DATA:-../shared/data}
case "$name" in
  beauty) config=configs/beauty.yaml data=$data_root/amazon-beauty/Beauty.txt extra=() ;;
  ml-100k) config=configs/ml-100k.yaml data=$data_root/ml-100k/u.data extra=() ;;
  ml-100k-notime)
    config=configs/ml-100k.yaml data=$data_root/ml-100k/u.data
    extra=(--set model.time_bias=false) ;;
  *) echo "unknown dataset '$name' (beauty, ml-100k, ml-100k-notime)" >&2; exit 2 ;;
esac
[ -f "$data" ] || { echo "missing $data (set GENREC_DATA to the folder holding the datasets)" >&2; exit 2; }
[ -x build/genrec ] || bash scripts/build.sh >&2
./build/genrec train --config "$config" --data "$data" --out "runs/quality-$name" \
  --name "$name" "${extra[@]}" "$@" | tail -n 1
