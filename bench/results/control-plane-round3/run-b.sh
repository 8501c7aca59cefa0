#!/bin/bash
# Control-plane round 3b (issue 18): the walk plans without the id range condition (PostgreSQL
# multiplied its selectivity with starts_with's and read and sorted the whole range in every
# arm: id_prefix p50 213 ms in pg-1m.txt). Binary sluice-cp4, built from the commit that says so.
URL=postgres://postgres@127.0.0.1:55432/postgres
NEW=/work/sluice-cp4
cd "$(dirname "$0")"
uptime > pg-1m-b.load
$NEW bench control-plane --target postgres --pg-url $URL --instances 1000000 --json pg-1m-b.json > pg-1m-b.txt 2>&1
uptime > sqlite-1m-b.load
$NEW bench control-plane --target sqlite --instances 1000000 --json sqlite-1m-b.json > sqlite-1m-b.txt 2>&1
echo done > RUNDONE-b
