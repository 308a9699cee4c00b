#!/bin/bash
cd /tmp/ab3
one() { # label bin weights
  ./$2 bench --configs 1.5b --contexts 1024 --weights $3 --synthetic-cache --runs 2 --decode-tokens 32 --threads 2 --bandwidth-mib 0 --json > $1-$3-$round.json 2> $1-$3-$round.err
  python3 -c "
import json;d=json.load(open('$1-$3-$round.json'));c=d['configs'][0]['contexts'][0]
print('$round $3 $1', round(c['decode_ms_per_step'],2), [round(x/32*1000,2) for x in c['decode_seconds']])" >> summary.txt
}
for round in 1 2 3; do
  for w in q4_0 bf16 q8_0; do
    one base hr-base $w
    one new hr-new $w
  done
done
echo DONE >> summary.txt
