#!/bin/bash
URL=postgres://postgres@127.0.0.1:55432/postgres
for r in 1 2; do
  uptime > lat-before-$r.load; /work/sluice-before bench sink --target postgres --pg-url $URL --scenario latency_under_load --json lat-before-$r.json > lat-before-$r.txt 2>&1
  uptime > lat-after-$r.load; /work/tgt-rel/release/sluice bench sink --target postgres --pg-url $URL --scenario latency_under_load --json lat-after-$r.json > lat-after-$r.txt 2>&1
done
echo done > LATDONE
