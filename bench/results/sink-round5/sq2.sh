#!/bin/bash
B=/work/tgt-rel/release/sluice
uptime > sq-wal-2.load; $B bench sink --target sqlite --scenario checkpoint_overhead --json sq-wal-2.json > sq-wal-2.txt 2>&1
uptime > sq-truncate-2.load; SLUICE_EXPERIMENT_JOURNAL=truncate $B bench sink --target sqlite --scenario checkpoint_overhead --json sq-truncate-2.json > sq-truncate-2.txt 2>&1
echo done > SQDONE
