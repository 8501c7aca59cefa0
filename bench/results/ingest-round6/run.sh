#!/bin/bash
URL=postgres://postgres@127.0.0.1:55432/postgres
for r in 1 2 3; do
  uptime > before-$r.load; /work/sluice-before bench ingest --pg-url $URL --json before-$r.json > before-$r.txt 2>&1
  uptime > after-$r.load; /work/tgt-rel/release/sluice bench ingest --pg-url $URL --json after-$r.json > after-$r.txt 2>&1
done
echo done > DONE
