#!/bin/bash
# The 256-row stripe (sluice-r6c) against the batch-long stripe (sluice-r6b), one invocation
# of 3 rounds each, nothing else running.
URL=postgres://postgres@127.0.0.1:55432/postgres
uptime > ckpt-pg-stripe256.load
/work/sluice-r6c bench sink --target postgres --pg-url $URL --scenario checkpoint_overhead --rounds 3 --json ckpt-pg-stripe256.json > ckpt-pg-stripe256.txt 2>&1
echo done > RUN3DONE
