#!/bin/bash
# Runtime defaults (issue 19): orchestration and activity concurrency pairs on the storage-bound
# workload (--activity-ms 0 --in-flight 500) and the seed workload (the benchmark's default:
# --activity-ms 10 --in-flight 20), SQLite file, interleaved over two rounds so host noise
# spreads over all pairs. Peak RSS from /usr/bin/time. Binary: /work/sluice-defaults.
cd "$(dirname "$0")"
B=/work/sluice-defaults
for round in 1 2; do
  for pair in 2/2 16/16 32/32 64/64 128/128 256/256; do
    o=${pair%/*}; a=${pair#*/}
    for w in storage seed; do
      if [ $w = storage ]; then args="--activity-ms 0 --in-flight 500"; else args="--activity-ms 10 --in-flight 20"; fi
      name=$w-$o-$a-r$round
      uptime > $name.load
      /usr/bin/time -f "max_rss_kb %M" $B bench orchestrations --store sqlite-file $args \
        --orch-concurrency $o --activity-concurrency $a --duration 15 --json $name.json > $name.txt 2>&1
    done
  done
done
echo done > RUNDONE
