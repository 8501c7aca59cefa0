#!/bin/bash
# Background retention: 1,000,000 instances (820,000 finished long ago), then alternating
# 10 s windows without and with the runtime's retention (default policy: batches of 100, at
# most 5% busy) while the fan-out workload runs; SQLite, then the manual PostgreSQL 15 cluster.
# Binary: sluice-cp6 (40b2853).
URL=postgres://postgres@127.0.0.1:55432/postgres
B=/work/sluice-cp6
uptime > retention-sqlite.load
$B bench control-plane --target sqlite --instances 1000000 --samples 5 --retention --json retention-sqlite.json > retention-sqlite.txt 2>&1
uptime > retention-pg.load
$B bench control-plane --target postgres --pg-url $URL --instances 1000000 --samples 5 --retention --json retention-pg.json > retention-pg.txt 2>&1
echo done > RUNDONE
