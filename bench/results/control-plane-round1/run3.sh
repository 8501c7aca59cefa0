#!/bin/bash
# Purging: 1,000,000 instances with 4 history events each (820,000 of them finished), every
# finished one purged in batches of 1,000 while the fan-out workload runs; SQLite, then the
# manual PostgreSQL 15 cluster; nothing else running. Binary: sluice-cp5.
URL=postgres://postgres@127.0.0.1:55432/postgres
B=/work/sluice-cp5
uptime > purge-sqlite.load
$B bench control-plane --target sqlite --instances 1000000 --samples 20 --purge --json purge-sqlite.json > purge-sqlite.txt 2>&1
uptime > purge-pg.load
$B bench control-plane --target postgres --pg-url $URL --instances 1000000 --samples 20 --purge --json purge-pg.json > purge-pg.txt 2>&1
echo done > RUN3DONE
