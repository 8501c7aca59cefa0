#!/bin/bash
# Control-plane round 3c (issue 18): what schema 3's instances_id_created costs the store-bound
# orchestration workload on PostgreSQL: sluice-cp2b (7c39ffd, schema 2) against sluice-cp4
# (schema 3), --activity-ms 0, alternated three times, nothing else running.
URL=postgres://postgres@127.0.0.1:55432/postgres
cd "$(dirname "$0")"
for r in 1 2 3; do
  for b in old new; do
    if [ $b = old ]; then B=/work/sluice-cp2b; else B=/work/sluice-cp4; fi
    uptime > orch0-pg-$b-$r.load
    $B bench orchestrations --store postgres --pg-url $URL --activity-ms 0 --duration 20 --json orch0-pg-$b-$r.json > orch0-pg-$b-$r.txt 2>&1
  done
done
echo done > RUNDONE-c
