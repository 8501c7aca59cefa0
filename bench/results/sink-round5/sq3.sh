#!/bin/bash
B=/work/tgt-rel/release/sluice
uptime > sq-opt-wal.load; $B bench sink --target sqlite --scenario checkpoint_overhead --json sq-opt-wal.json > sq-opt-wal.txt 2>&1
uptime > sq-opt-rollback.load; $B bench sink --target sqlite --scenario checkpoint_overhead --sqlite-journal rollback --json sq-opt-rollback.json > sq-opt-rollback.txt 2>&1
echo done > SQ3DONE
