#!/bin/bash
# Round 7: the 256-row-stripe binary (sluice-r6c, 36e29b6) on a quiet host, after a warm-up run;
# nothing else running. Then two latency-under-load invocations.
URL=postgres://postgres@127.0.0.1:55432/postgres
B=/work/sluice-r6c
$B bench sink --target postgres --pg-url $URL --scenario single --rows 2000000 > warmup.txt 2>&1
uptime > ckpt-pg.load
$B bench sink --target postgres --pg-url $URL --scenario checkpoint_overhead --rounds 3 --json ckpt-pg.json > ckpt-pg.txt 2>&1
for r in 1 2; do
  uptime > lat-$r.load
  $B bench sink --target postgres --pg-url $URL --scenario latency_under_load --json lat-$r.json > lat-$r.txt 2>&1
done
echo done > RUNDONE
