#!/bin/bash
# Runtime defaults, confirmation (issue 19): the binary with the new defaults (128/128), run with
# no concurrency flags, against the best pair of round 1 (256/256), interleaved over three rounds,
# on the storage-bound and the seed workloads (SQLite file). Binary: /work/sluice-defaults2.
cd "$(dirname "$0")"
B=/work/sluice-defaults2
for round in 1 2 3; do
  for conf in defaults tuned; do
    if [ $conf = tuned ]; then flags="--orch-concurrency 256 --activity-concurrency 256"; else flags=""; fi
    for w in storage seed; do
      if [ $w = storage ]; then args="--activity-ms 0 --in-flight 500"; else args="--activity-ms 10 --in-flight 20"; fi
      name=$w-$conf-r$round
      uptime > $name.load
      /usr/bin/time -f "max_rss_kb %M" $B bench orchestrations --store sqlite-file $args $flags \
        --duration 15 --json $name.json > $name.txt 2>&1
    done
  done
done
echo done > RUNDONE
