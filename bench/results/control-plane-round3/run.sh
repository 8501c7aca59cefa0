#!/bin/bash
# Control-plane round 3 (issue 18): listing by id prefix planned by a probe of its id range
# (c31184d, sluice-cp3) over 1,000,000 instances on both stores, then what PostgreSQL's schema 3
# index (instances_id_created) costs the orchestration workload: the binary before it
# (7c39ffd, sluice-cp2b) against the one with it, alternated, nothing else running.
URL=postgres://postgres@127.0.0.1:55432/postgres
NEW=/work/sluice-cp3
OLD=/work/sluice-cp2b
cd "$(dirname "$0")"
uptime > sqlite-1m.load
$NEW bench control-plane --target sqlite --instances 1000000 --json sqlite-1m.json > sqlite-1m.txt 2>&1
uptime > pg-1m.load
$NEW bench control-plane --target postgres --pg-url $URL --instances 1000000 --json pg-1m.json > pg-1m.txt 2>&1
for r in 1 2; do
  for b in old new; do
    if [ $b = old ]; then B=$OLD; else B=$NEW; fi
    uptime > orch-pg-$b-$r.load
    $B bench orchestrations --store postgres --pg-url $URL --duration 30 --json orch-pg-$b-$r.json > orch-pg-$b-$r.txt 2>&1
  done
done
echo done > RUNDONE
