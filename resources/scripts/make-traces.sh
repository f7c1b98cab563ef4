#!/usr/bin/env bash
# `make traces`: memory access traces of real programs (valgrind lackey, imported with
# `tiervisor trace import --lackey`) and of the test guest's workloads (recorded live
# with `tiervisor run --trace-out`), split into training and evaluation sets:
#   resources/out/traces/train/*.tvt   programs/inputs the predictor may learn from
#   resources/out/traces/eval/*.tvt    held-out programs/inputs for replay benchmarks
#   resources/out/traces/holdout/*.tvt a second held-out set (session 8), for checking
#                                      a change whose idea came after the eval set
#                                      had been seen
#   resources/out/traces/holdout2/*.tvt a third (session 15), for a change the
#                                      holdout set has already judged
#   resources/out/traces/anomaly/guest-phases.tvt  a phases recording of another seed
#                                      for `anomaly_eval --set holdout` (session 21)
#   resources/out/traces/anomaly/guest-phases-2.tvt  one of a third seed for
#                                      `anomaly_eval --set holdout2` (session 37)
# docs/traces.md says which is which and why. Inputs are generated here from fixed
# seeds, so every run traces the same work. Run from anywhere after `make build`.
#
# Environment: TIERVISOR (binary), GUEST (test guest ELF), OUT (output folder),
# JOBS (parallel captures, default 2), MAX_RECORDS (safety cap per trace),
# ONLY (space-separated trace names to make, default all).
set -euo pipefail
# One locale everywhere: traces do not depend on the machine's, and UTF-8 regex and
# collation code would dominate the grep and sort traces.
export LC_ALL=C

cd "$(dirname "$0")/../.."
root=$PWD
tiervisor=$(realpath -m "${TIERVISOR:-target/release/tiervisor}")
guest=$(realpath -m "${GUEST:-resources/out/testguest.elf}")
out=$(realpath -m "${OUT:-resources/out/traces}")
jobs=${JOBS:-2}
max_records=${MAX_RECORDS:-12000000}
only=${ONLY:-}
for tool in valgrind setarch flock sqlite3 xz gzip bzip2 lz4 tar sed perl diff gcc sort awk grep /usr/bin/python3 "$tiervisor"; do
    command -v "$tool" >/dev/null || { echo "make-traces: $tool is missing (make setup / make build)" >&2; exit 1; }
done
python=/usr/bin/python3 # the distribution's, not a version manager's shell shim
cc1=$(gcc -print-prog-name=cc1)

# A fixed work directory: programs see its path (Python makes the script's path
# absolute), and a random name there changes their traces. One run at a time.
work=/tmp/tiervisor-make-traces
exec 9>"$work.lock"
flock 9
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
mkdir -p "$out/train" "$out/eval" "$out/holdout" "$out/holdout2" "$out/anomaly"

# ---------------------------------------------------------------- inputs (fixed seeds)
# words SEED LINES: pseudo-English text, 8-12 words a line from a 2,000-word vocabulary
# with a Zipf-like skew, so compressors and counters see realistic repetition.
words() {
    awk -v seed="$1" -v lines="$2" 'BEGIN {
        srand(seed)
        for (i = 0; i < 2000; i++) {
            w = ""; n = 2 + int(rand() * 8)
            for (j = 0; j < n; j++) w = w sprintf("%c", 97 + int(rand() * 26))
            vocab[i] = w
        }
        for (l = 0; l < lines; l++) {
            n = 8 + int(rand() * 5); s = ""
            for (j = 0; j < n; j++) s = s (j ? " " : "") vocab[int(2000 * rand() ^ 3)]
            print s
        }
    }'
}
# numbers SEED LINES: one integer a line, plus a text key, for sort.
numbers() {
    awk -v seed="$1" -v lines="$2" 'BEGIN { srand(seed)
        for (i = 0; i < lines; i++) printf "%d k%06d\n", int(rand() * 1e9), int(rand() * 1e6) }'
}
# csource SEED FUNCS: a self-contained C file (no #include) with FUNCS functions of
# loops, switches and arithmetic: something for the optimiser to chew on.
csource() {
    awk -v seed="$1" -v funcs="$2" 'BEGIN { srand(seed)
        print "typedef unsigned long u64; struct node { struct node *next; u64 key, val; };"
        for (f = 0; f < funcs; f++) {
            printf "u64 f%d(u64 *a, int n, struct node *p) {\n  u64 s = %d;\n", f, int(rand() * 1000)
            printf "  for (int i = 0; i < n; i++) {\n    switch ((a[i] + %d) %% 5) {\n", int(rand() * 97)
            for (c = 0; c < 5; c++)
                printf "    case %d: s = s * %d + (a[i] >> %d); break;\n", c, 3 + int(rand() * 50), 1 + c
            printf "    }\n    if (s & %d) a[(i * %d) %% n] ^= s;\n  }\n", 1 + int(rand() * 255), 1 + int(rand() * 13)
            printf "  while (p) { s += p->key * %d ^ p->val; p = p->next; }\n", int(rand() * 100)
            if (f > 0) printf "  return s + f%d(a, n / 2, p);\n}\n", int(rand() * f)
            else print "  return s;\n}"
        }
    }'
}
# sql_insert ROWS / sql_query ROWS: two SQLite workloads with different shapes.
sql_insert() {
    cat <<SQL
PRAGMA cache_size = -16384;
CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v TEXT);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $1)
INSERT INTO t SELECT x, (x * 7919) % $1, printf('%08x-%d', (x * 2654435761) % 4294967296, x) FROM c;
CREATE INDEX tk ON t(k);
SELECT count(*), sum(k) FROM t WHERE k BETWEEN 1000 AND 5000;
UPDATE t SET v = upper(v) WHERE id % 7 = 0;
SELECT k % 100, count(*) FROM t GROUP BY 1 ORDER BY 2 DESC LIMIT 5;
SQL
}
sql_query() {
    cat <<SQL
PRAGMA cache_size = -16384;
CREATE TABLE cust(id INTEGER PRIMARY KEY, region INTEGER, name TEXT);
CREATE TABLE ord(id INTEGER PRIMARY KEY, cust INTEGER, amount INTEGER);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $1 / 8)
INSERT INTO cust SELECT x, x % 17, 'customer-' || x FROM c;
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $1)
INSERT INTO ord SELECT x, (x * 48271) % ($1 / 8) + 1, (x * 16807) % 1000 FROM c;
CREATE INDEX oc ON ord(cust);
SELECT region, count(*), sum(amount) FROM cust JOIN ord ON ord.cust = cust.id GROUP BY region;
SELECT name FROM cust WHERE id IN (SELECT cust FROM ord WHERE amount > 990) ORDER BY name LIMIT 10;
DELETE FROM ord WHERE amount < 100;
SELECT count(*) FROM ord;
SQL
}
sql_window() {
    cat <<SQL
PRAGMA cache_size = -16384;
CREATE TABLE ev(id INTEGER PRIMARY KEY, dev INTEGER, t INTEGER, val INTEGER);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $1)
INSERT INTO ev SELECT x, (x * 31) % 23, x * 3 + (x * 7) % 5, (x * 69069) % 1000 FROM c;
SELECT dev, max(s) FROM (SELECT dev, sum(val) OVER (PARTITION BY dev ORDER BY t ROWS 5 PRECEDING) AS s FROM ev) GROUP BY dev;
SELECT dev, t, val, rank() OVER (PARTITION BY dev ORDER BY val DESC) AS r FROM ev ORDER BY r, dev LIMIT 20;
SQL
}
py_json() {
    cat <<'PY'
import json
rows = [{"id": i, "name": "n%05d" % ((i * 7919) % 30011), "tags": [i % 7, i % 11]} for i in range(600)]
text = json.dumps(rows)
back = json.loads(text)
back.sort(key=lambda r: (r["tags"][1], r["name"]))
print(len(text), back[0]["id"], back[-1]["id"])
PY
}
py_dict() {
    cat <<'PY'
d = {}
for i in range(800):
    d["k%d" % ((i * 7919) % 100003)] = [i, str(i) * 3]
s = sorted(d.items(), key=lambda kv: kv[1][0] % 977)
print(len(s), sum(v[0] for _, v in s[:1000]))
PY
}

# Sizes keep each trace to a few million records (lackey runs ~50-100x slower than
# native). xz and cc1 spend more than MAX_RECORDS in start-up and table set-up alone;
# their traces are the first MAX_RECORDS records (the import stops, valgrind is ended).
words 1 1000 >"$work/text-a.txt"      # ~50 KB, train
words 2 1500 >"$work/text-b.txt"      # ~75 KB of different text, eval
numbers 3 8000 >"$work/numbers-a.txt"
numbers 4 5000 >"$work/numbers-b.txt"
csource 5 6 >"$work/prog-a.c"
sql_insert 1000 >"$work/insert.sql"
sql_query 1200 >"$work/query.sql"
words 7 1500 >"$work/text-c.txt"      # ~100 KB for grep, eval
py_dict >"$work/dict.py"
# The holdout set's inputs (new seeds, new programs).
words 8 1500 >"$work/text-d.txt"      # ~75 KB for bzip2 and perl
words 9 800 >"$work/text-e.txt"
sed 's/a/e/3; 7~5d' "$work/text-e.txt" >"$work/text-f.txt"   # an edited copy, for diff
sql_window 1500 >"$work/window.sql"
py_json >"$work/json.py"
# The holdout2 set's inputs (session 15: new seeds, programs in no other set).
words 10 2000 >"$work/text-g.txt"     # ~130 KB for lz4 and sed
words 11 600 >"$work/text-h.txt"
words 12 600 >"$work/text-i.txt"
cat >"$work/subst.pl" <<'PL'
my %c;
while (<>) { s/([aeiou])([a-z])/$2$1/g; $c{$_}++ for split; }
print scalar(keys %c), "\n";
PL

# ---------------------------------------------------------------- captures
# Commands run in $work and name its files relative to it.
# program SET NAME DESCRIPTION -- COMMAND...: run COMMAND under lackey with its trace
# (on fd 3) piped straight into the importer. The program writes to a scratch file,
# not /dev/null: GNU grep, for one, stops at the first match when output is /dev/null.
program() {
    local set=$1 name=$2 desc=$3
    shift 4
    local dest="$out/$set/$name.tvt" fifo="$work/$name.fifo"
    mkfifo "$fifo"
    # Reproducible traces: no address-space randomisation (setarch -R), fixed hash
    # seeds for Python and Perl, and one fixed environment (its size moves the stack).
    (cd "$work" && exec env -i PATH=/usr/bin:/bin LC_ALL=C HOME=/nonexistent \
        PYTHONHASHSEED=0 PERL_HASH_SEED=0 PERL_PERTURB_KEYS=0 \
        setarch "$(uname -m)" -R \
        valgrind --tool=lackey --trace-mem=yes --log-fd=3 "$@" 3>"$fifo" >"$work/$name.out" 2>&1 </dev/null) &
    local vg=$!
    "$tiervisor" trace import --lackey "$fifo" -o "$dest" --max-records "$max_records" \
        --description "$desc" 2>"$work/$name.log" || true
    # At --max-records the import stops reading; valgrind would run the program to
    # its end with nowhere to write, so end it.
    kill -KILL "$vg" 2>/dev/null || true
    wait "$vg" 2>/dev/null || true
    [ -s "$dest" ] && "$tiervisor" trace info "$dest" >/dev/null ||
        { echo "make-traces: $name failed: $(cat "$work/$name.log")" >&2; return 1; }
    echo "make-traces: $set/$name.tvt: $(sed 's/^tiervisor: //' "$work/$name.log")"
}

# guest SET NAME CMDLINE: the test guest under tiervisor at 25% RAM with --trace-out.
guest_run() {
    local set=$1 name=$2 cmdline=$3 dir="$work/guest-$2"
    mkdir -p "$dir"
    printf '[tier1]\ncapacity = "64M"\nbackend = "ram"\n[tier2]\ncapacity = "64M"\nfile = "%s/t2.img"\nprofile = "nvme"\n' \
        "$dir" >"$dir/tiers.toml"
    if TIERVISOR_WORKDIR=$dir "$tiervisor" run --kernel "$guest" --memory 64M --cmdline "$cmdline" \
        --tiers "$dir/tiers.toml" --ram-budget 4M --trace-out "$out/$set/$name.tvt" \
        >"$dir/serial.log" 2>"$dir/err.log" </dev/null &&
        grep -q 'result=ok' "$dir/serial.log"; then
        echo "make-traces: $set/$name.tvt: $cmdline, $("$tiervisor" trace info --json "$out/$set/$name.tvt" |
            grep -o '"records":[0-9]*') (guest-physical pages, missing/sampled faults)"
    else
        echo "make-traces: guest $name failed: $(tail -1 "$dir/err.log") $(grep testguest: "$dir/serial.log" | tail -1)" >&2
        return 1
    fi
}

captures=(
    # set   name            description                                         command
    "train|sqlite-insert|sqlite3: 1k-row insert, index build, range scan, update|sqlite3 a.db .read\\ insert.sql"
    "train|xz|xz -6 compressing 50 KB of text|xz -6 -T1 -c text-a.txt"
    "train|cc1|gcc cc1 -O2 on a generated 6-function C file|$cc1 -quiet -O2 prog-a.c -o /dev/null"
    "train|python-dict|python3: 800-entry dict build and sort|$python -P -S dict.py"
    "train|sort-numeric|sort -n of 8k lines|sort -n -S 64M --parallel=1 numbers-a.txt"
    "eval|sqlite-join|sqlite3: two-table join, group by, subquery, delete (1.2k rows)|sqlite3 b.db .read\\ query.sql"
    "eval|gzip|gzip -6 compressing 75 KB of different text|gzip -6 -c text-b.txt"
    "eval|grep-regex|grep -E -o -w of vowel-pair words in 100 KB of text|grep -E -o -w [a-z]*[aeiou][aeiou][a-z]* text-c.txt"
    "eval|awk-wordfreq|awk word-frequency count|awk {for(i=1;i<=NF;i++)c[\$i]++}END{for(w\\ in\\ c)n++;print\\ n} text-b.txt"
    "eval|sort-text|sort -k2 of 5k text keys|sort -k2 -S 64M --parallel=1 numbers-b.txt"
    "holdout|bzip2|bzip2 -9 compressing 75 KB of text|bzip2 -9 -c text-d.txt"
    "holdout|perl-subst|perl: regex substitutions and a word count over 75 KB of text|perl subst.pl text-d.txt"
    "holdout|sqlite-window|sqlite3: window functions over 1.5k rows|sqlite3 c.db .read\ window.sql"
    "holdout|python-json|python3: 600-record JSON dump, parse and sort|$python -P -S json.py"
    "holdout|diff|diff of two 800-line texts, one edited|diff text-e.txt text-f.txt"
    "holdout2|lz4-hc|lz4 -9 compressing 130 KB of text|lz4 -9 -c text-g.txt"
    "holdout2|tar|tar archive of three texts (210 KB)|tar cf - text-g.txt text-h.txt text-i.txt"
    "holdout2|sed-regex|sed -E: two regex substitutions over 130 KB of text|sed -E s/([aeiou])([a-z]+)/\\\\2\\\\1/g;s/^(.{20}).*/\\\\1/ text-g.txt"
)
guests=(
    "train|guest-zipf|workload=zipf mem=16M iters=100000 seed=11"
    "train|guest-chase|workload=chase mem=16M iters=100000 seed=12"
    "train|guest-kv|workload=kv mem=16M iters=50000 seed=13"
    "train|guest-scan|workload=scan mem=16M iters=100000 seed=14"
    "eval|guest-phases|workload=phases mem=16M iters=100000 seed=21"
    "eval|guest-random|workload=random mem=16M iters=100000 seed=22"
    "eval|guest-stride|workload=stride mem=16M iters=100000 seed=23"
    "anomaly|guest-phases|workload=phases mem=16M iters=100000 seed=31"
    "anomaly|guest-phases-2|workload=phases mem=16M iters=100000 seed=41"
)

wanted() { [ -z "$only" ] || [[ " $only " == *" $1 "* ]]; }

status=0
running=0
for c in "${captures[@]}"; do
    IFS='|' read -r set name desc cmd <<<"$c"
    wanted "$name" || continue
    # The command field is split on spaces; "\ " keeps a space inside one argument.
    read -a argv <<<"$cmd"
    program "$set" "$name" "$desc" -- "${argv[@]}" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n || status=1
        running=$((running - 1))
    fi
done
while [ "$running" -gt 0 ]; do
    wait -n || status=1
    running=$((running - 1))
done

# Live recordings run one at a time: each VM is timing-sensitive.
if [ -e "$guest" ]; then
    for g in "${guests[@]}"; do
        IFS='|' read -r set name cmdline <<<"$g"
        wanted "$name" || continue
        guest_run "$set" "$name" "$cmdline" || status=1
    done
else
    echo "make-traces: $guest is missing (make guest): no test-guest traces" >&2
    status=1
fi
exit $status
