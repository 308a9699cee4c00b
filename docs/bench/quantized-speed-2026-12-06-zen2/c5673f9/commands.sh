#!/bin/bash
B=hymba-ref
m() { echo "== $1: load $(cat /proc/loadavg)" >> machine.txt; }
lscpu > machine.txt
m decode-prefill; $B bench --configs 1.5b --contexts 1024 --weights bf16,q8_0,q4_0 --threads 2 --runs 3 --decode-tokens 32 --json > decode-prefill-1.5b-context1024.json 2> decode-prefill.stderr.txt
m batch16; $B bench --configs 1.5b --contexts 128 --weights bf16,q8_0,q4_0 --threads 2 --batch-sizes 16 --synthetic-cache --runs 1 --decode-tokens 16 --json > batch16-1.5b-context128.json 2> batch16.stderr.txt
m from-disk; $B bench --from-disk --configs 1.5b --weights q8_0 --threads 2 --runs 3 --json > from-disk-1.5b-q8_0.json 2> from-disk.stderr.txt
m profile; $B bench --configs 1.5b --contexts 1024 --weights q4_0 --profile --runs 1 --decode-tokens 16 --threads 2 --json > profile-1.5b-context1024-q4_0.json 2> profile.stderr.txt
m done
echo finished > DONE
