#!/bin/bash
URL=postgres://postgres@127.0.0.1:55432/postgres
for r in 1 2; do
  uptime > before-$r.load; /work/sluice-before bench ingest --pg-url $URL --json ingest-before-$r.json > ingest-before-$r.txt 2>&1
  uptime > after-$r.load; /work/tgt-rel/release/sluice bench ingest --pg-url $URL --json ingest-after-$r.json > ingest-after-$r.txt 2>&1
done
uptime > pg2.load; /work/tgt-rel/release/sluice bench sink --target postgres --pg-url $URL --scenario checkpoint_overhead --json lanes-pg-2.json > lanes-pg-2.txt 2>&1
uptime > sqlite.load; /work/tgt-rel/release/sluice bench sink --target sqlite --scenario checkpoint_overhead --json lanes-sqlite-1.json > lanes-sqlite-1.txt 2>&1
uptime > lat.load; /work/tgt-rel/release/sluice bench sink --target postgres --pg-url $URL --scenario latency_under_load --json latency-pg-1.json > latency-pg-1.txt 2>&1
echo done > DONE
