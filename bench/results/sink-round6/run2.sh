#!/bin/bash
# The binary of the commit that adds the timeline and --rounds; nothing else running.
URL=postgres://postgres@127.0.0.1:55432/postgres
B=/work/sluice-r6b
for r in 4 5; do
  uptime > lat-$r.load
  $B bench sink --target postgres --pg-url $URL --scenario latency_under_load --json lat-$r.json > lat-$r.txt 2>&1
done
uptime > ckpt-pg.load
$B bench sink --target postgres --pg-url $URL --scenario checkpoint_overhead --rounds 3 --json ckpt-pg.json > ckpt-pg.txt 2>&1
echo done > RUN2DONE
