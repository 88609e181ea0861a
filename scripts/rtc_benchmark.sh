#!/usr/bin/env bash
# The RTC table (docs/benchmarks/rtc.md): `flashrt-ros evaluate` for delays x overlap policies,
# one JSON per cell in OUT (default docs/benchmarks/rtc), then the markdown table on stdout.
#   scripts/rtc_benchmark.sh [OUT] [EPISODES]
# Cells run one at a time with `nice` (a 2-core machine is shared). Extra host parameters for every
# cell: RTC_BENCH_SET (e.g. "max_velocity=0.35,0.35"); the guided cells' RTC settings: RTC_GUIDED_SET
# (e.g. "rtc_schedule=LINEAR"). Both empty by default: the host's defaults.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${1:-docs/benchmarks/rtc}
EPISODES=${2:-50}
DELAYS=${RTC_BENCH_DELAYS:-"0 100 200 300"}
COMMON=()
for kv in ${RTC_BENCH_SET:-}; do COMMON+=(--set "$kv"); done
GUIDED=()
for kv in ${RTC_GUIDED_SET:-}; do GUIDED+=(--set "$kv"); done
mkdir -p "$OUT"
for delay in $DELAYS; do
  for cell in replace blend rtc-guided rtc-trained; do
    case $cell in
      replace|blend) args=(--overlap-policy "$cell") ;;
      rtc-guided) args=(--overlap-policy rtc --rtc-mode guided "${GUIDED[@]}") ;;
      rtc-trained) args=(--overlap-policy rtc --rtc-mode trained) ;;
    esac
    FLASHRT_SKIP_BUILD=1 nice scripts/run_in_env.sh flashrt-ros evaluate --episodes "$EPISODES" \
      --delay-ms "$delay" "${args[@]}" "${COMMON[@]}" --json "$OUT/${cell}-${delay}ms.json"
  done
done
FLASHRT_SKIP_BUILD=1 scripts/run_in_env.sh python scripts/rtc_table.py "$OUT"/*.json
