#!/bin/bash
# Control-plane round 1: listing and counts over 1,000,000 instances on SQLite and PostgreSQL
# (the manual PostgreSQL 15 cluster), then the cost of the listing columns, indexes and count
# triggers on the orchestration workload: the binary before them (sluice-r6c, 36e29b6) against
# the one with them (sluice-cp2), alternated, nothing else running.
URL=postgres://postgres@127.0.0.1:55432/postgres
NEW=/work/sluice-cp2
OLD=/work/sluice-r6c
uptime > sqlite-1m.load
$NEW bench control-plane --target sqlite --instances 1000000 --json sqlite-1m.json > sqlite-1m.txt 2>&1
uptime > pg-1m.load
$NEW bench control-plane --target postgres --pg-url $URL --instances 1000000 --json pg-1m.json > pg-1m.txt 2>&1
for r in 1 2; do
  for b in old new; do
    if [ $b = old ]; then B=$OLD; else B=$NEW; fi
    uptime > orch-sqlite-$b-$r.load
    $B bench orchestrations --duration 30 --json orch-sqlite-$b-$r.json > orch-sqlite-$b-$r.txt 2>&1
    uptime > orch-pg-$b-$r.load
    $B bench orchestrations --store postgres --pg-url $URL --duration 30 --json orch-pg-$b-$r.json > orch-pg-$b-$r.txt 2>&1
  done
done
echo done > RUNDONE
