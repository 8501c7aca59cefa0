#!/bin/bash
# Purge with the storage it leaves (SQLite, then PostgreSQL), then the background retention on
# PostgreSQL again (the first run's windows drifted upward). Binary: sluice-cp7 (after the
# storage report commit). Nothing else running.
URL=postgres://postgres@127.0.0.1:55432/postgres
B=/work/sluice-cp7
uptime > purge-sqlite.load
$B bench control-plane --target sqlite --instances 1000000 --samples 5 --purge --json purge-sqlite.json > purge-sqlite.txt 2>&1
uptime > purge-pg.load
$B bench control-plane --target postgres --pg-url $URL --instances 1000000 --samples 5 --purge --json purge-pg.json > purge-pg.txt 2>&1
uptime > retention-pg-2.load
$B bench control-plane --target postgres --pg-url $URL --instances 1000000 --samples 5 --retention --json retention-pg-2.json > retention-pg-2.txt 2>&1
echo done > RUN2DONE
