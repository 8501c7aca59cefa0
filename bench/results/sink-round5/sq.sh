#!/bin/bash
B=/work/tgt-rel/release/sluice
uptime > sq-wal-1.load; $B bench sink --target sqlite --scenario checkpoint_overhead --json sq-wal-1.json > sq-wal-1.txt 2>&1
uptime > sq-truncate-1.load; SLUICE_EXPERIMENT_JOURNAL=truncate $B bench sink --target sqlite --scenario checkpoint_overhead --json sq-truncate-1.json > sq-truncate-1.txt 2>&1
echo done > SQDONE
