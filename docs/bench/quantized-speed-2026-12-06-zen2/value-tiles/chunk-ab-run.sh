#!/bin/bash
cd /tmp/ab2
one() { # label bin env
  env $3 ./$2 bench --configs 1.5b --contexts 1024 --weights q4_0 --synthetic-cache --runs 2 --decode-tokens 32 --threads 2 --bandwidth-mib 0 --json > out.json 2> out.err
  python3 -c "
import json;d=json.load(open('out.json'));c=d['configs'][0]['contexts'][0]
print('$1', round(c['decode_ms_per_step'],2), [round(x/32*1000,2) for x in c['decode_seconds']])" >> summary.txt
}
# rounds 1-2 ran with "one c64 hr-chunk CHUNK=64" and "one c32 hr-chunk CHUNK=32" after "one base", and without c4
for round in 3 4 5; do
  one base hr-base X=1
  one c16 hr-chunk CHUNK=16
  one c8 hr-chunk CHUNK=8
  one c4 hr-chunk CHUNK=4
done
echo DONE >> summary.txt
