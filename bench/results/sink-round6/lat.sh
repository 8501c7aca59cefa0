#!/bin/bash
# Latency under load on a quiet host: three invocations of one binary (f4ee97f), nothing else running.
URL=postgres://postgres@127.0.0.1:55432/postgres
for r in 1 2 3; do
  uptime > lat-$r.load
  psql "$URL" -Atc "select checkpoints_timed, checkpoints_req from pg_stat_bgwriter" > lat-$r.ckpt-before
  /work/sluice-r6 bench sink --target postgres --pg-url $URL --scenario latency_under_load --json lat-$r.json > lat-$r.txt 2>&1
  psql "$URL" -Atc "select checkpoints_timed, checkpoints_req from pg_stat_bgwriter" > lat-$r.ckpt-after
done
echo done > LATDONE
