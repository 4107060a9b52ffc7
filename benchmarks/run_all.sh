#!/usr/bin/env bash
# Run every benchmark once, one after the other, and keep the log (benchmarks/results/).
# Each prints a table and one "BENCH_JSON {...}" line; see benchmarks/README.md.
#   bash benchmarks/run_all.sh            # the default runs (about 30-40 min on 2 cores)
#   SCALING=1 bash benchmarks/run_all.sh  # plus the volume-size runs of docs/performance.md
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results
log="benchmarks/results/run_$(date -u +%Y%m%dT%H%M%SZ).log"

run() {
    echo "=== $* ($(date -u +%H:%M:%S) UTC; uptime:$(uptime | sed 's/.*load average/ load average/'))" | tee -a "$log"
    "$@" 2>&1 | grep -v -e '^\s*$' -e 'Warning' | tee -a "$log"
}

run python benchmarks/bench_inference.py
run python benchmarks/bench_crf.py
run python benchmarks/bench_radiomics.py
run xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/bench_gui.py
run python benchmarks/bench_training.py

if [[ "${SCALING:-0}" == 1 ]]; then
    run python benchmarks/bench_inference.py --variants single --ct-spacing 1 1 1.5
    run python benchmarks/bench_inference.py --variants single --ct-spacing 1 1 1
    run python benchmarks/bench_crf.py --roi-mm 144 144 144
    run python benchmarks/bench_crf.py --roi-mm 200 200 155
fi
grep '^BENCH_JSON ' "$log" > "${log%.log}.jsonl" || true
echo "log: $log; JSON lines: ${log%.log}.jsonl"
