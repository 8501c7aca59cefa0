#!/bin/bash
# PostgreSQL listing over 1,000,000 instances, then the store-bound orchestration workload
# (--activity-ms 0: the store, not the activities' sleep, limits the rate) with the binary
# before the listing columns, indexes and count triggers (sluice-r6c, 36e29b6) and with them
# (sluice-cp3), alternated, three rounds; nothing else running.
URL=postgres://postgres@127.0.0.1:55432/postgres
NEW=/work/sluice-cp3
OLD=/work/sluice-r6c
uptime > pg-1m.load
$NEW bench control-plane --target postgres --pg-url $URL --instances 1000000 --json pg-1m.json > pg-1m.txt 2>&1
for r in 1 2 3; do
  for b in old new; do
    if [ $b = old ]; then B=$OLD; else B=$NEW; fi
    uptime > orch-sqlite-$b-$r.load
    $B bench orchestrations --activity-ms 0 --duration 20 --json orch-sqlite-$b-$r.json > orch-sqlite-$b-$r.txt 2>&1
    uptime > orch-pg-$b-$r.load
    $B bench orchestrations --store postgres --pg-url $URL --activity-ms 0 --duration 20 --json orch-pg-$b-$r.json > orch-pg-$b-$r.txt 2>&1
  done
done
echo done > RUNDONE
