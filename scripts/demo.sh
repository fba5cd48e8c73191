#!/usr/bin/env bash
# The main job on an embedded default: a local folder as the datastore, with sample
# data generated here. Registers two versions, shows and verifies them, exports a
# manifest, registers a train/test split, a sample and a filtered subset of a version,
# mounts a version read-only and reads it through the mount, downloads it, reads it
# from Python (amlfs.Dataset, pandas on amlfs://),
# writes results through an output mount registered as a new dataset (a checkpoint
# renamed over one still uploading; a second mount of it refused), uploads a folder
# (a link out of it refused), runs a job with
# `amlfs run` and shows its lineage, runs a two-step pipeline (again, reused; then on new
# input, rerun) and prunes its intermediates, shares the registry with a second state
# folder through a team catalog in the datastore, registers files from a web server that sends no
# ETag (pinned by their MD5), then changes a source file to show that amlfs notices
# (verify reports it, a diff against a new version names it, the mount refuses its bytes)
# while a snapshot with a copy, taken before the change, still reads the pinned bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh

demo=${AMLFS_DEMO_DIR:-$PWD/demo-home}
rm -rf "$demo"
mkdir -p "$demo"
export AMLFS_HOME="$demo/state"
amlfs=(.venv/bin/amlfs)
step() { printf '\n\033[1m$ amlfs %s\033[0m\n' "$*"; "${amlfs[@]}" "$@"; }
shell() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
mnt="$demo/mnt"
# Whatever happens, leave no mount behind.
trap '[[ -d "$mnt" ]] && grep -qs " $mnt " /proc/mounts && "${amlfs[@]}" unmount "$mnt"' EXIT

.venv/bin/python - "$demo/store" <<'PY'
import random, sys
from pathlib import Path
root, rng = Path(sys.argv[1]), random.Random(27)
for week in (27, 28):
    for day in ("mon", "tue", "wed", "thu", "fri"):
        path = root / "Weather" / f"week{week}" / f"{day}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [f"{h},{rng.uniform(-5, 30):.1f},{rng.randint(0, 100)}" for h in range(24)]
        path.write_text("hour,temp_c,humidity\n" + "\n".join(rows) + "\n")
PY
echo "sample data: $(find "$demo/store" -type f | wc -l) files under $demo/store"

step datastore add local "file://$demo/store"
step dataset register weather --datastore local --path Weather/week27 --description "week 27"
step dataset register weather --datastore local --path Weather/week27 --path Weather/week28 \
  --description "weeks 27 and 28" --tag source=demo
step dataset versions weather
step dataset show weather:2 --files
step dataset verify weather:1
step dataset export weather:1

# Subsets pin the parent's files (nothing is copied) and remember how they were made;
# each file's side is a hash of (seed, path), so adding files never moves old ones.
step dataset split weather:2 --fraction 0.8 --seed 7 --register weather-train --register weather-test
step dataset sample weather:2 --fraction 0.2 --register weather-fifth
step dataset filter weather:2 --include 'week28' --exclude '**/fri.csv' --register week28-weekdays
step dataset show weather-test --files
step lineage weather-fifth

mkdir -p "$mnt"
step mount weather:2 "$mnt"
shell find "$mnt" -type f
shell head -3 "$mnt/week28/fri.csv"
shell cmp "$mnt/week27/mon.csv" "$demo/store/Weather/week27/mon.csv"
# A second epoch is the kernel's alone: opens and cached pages never reach the daemon,
# so the requests it answered (counted by kind in `amlfs status --json`) do not move.
epoch() {
  cat "$mnt"/week2?/*.csv > /dev/null
  sleep 1.2  # the daemon writes its counters every second
  "${amlfs[@]}" status --json | .venv/bin/python -c '
import json, sys
mount = next(m for m in json.load(sys.stdin) if m["mountpoint"] == sys.argv[1])
print("  requests the daemon answered so far:", mount["stats"]["requests"])' "$mnt"
}
echo; echo "first epoch over the mount:"; epoch
echo "second epoch:"; epoch
# A reader that knows its order (a shuffled sampler) tells the mount, which fetches those
# files ahead in that order: amlfs.sampler.HintedSampler wraps a PyTorch sampler the same way.
shell .venv/bin/python -c '
import random, sys, time
from pathlib import Path
from amlfs.sampler import hint
root = Path(sys.argv[1])
order = sorted(str(p.relative_to(root)) for p in root.rglob("*.csv"))
random.Random(3).shuffle(order)
hint(root, order)
print("hinted", len(order), "files, first", order[:3])' "$mnt"
sleep 1.2
"${amlfs[@]}" status --json | .venv/bin/python -c '
import json, sys
stats = next(m for m in json.load(sys.stdin) if m["mountpoint"] == sys.argv[1])["stats"]
print("  hints taken:", stats["hints_received"], " files fetched ahead for them:",
      stats["hinted_fetches"], " storage:", stats["storage"]["state"])' "$mnt"
step status
step unmount "$mnt"

# Download mode: the same version as local files, every one checked; a re-run resumes.
step download weather:2 "$demo/download"
shell diff -r "$demo/download/week28" "$demo/store/Weather/week28"
step download weather:2 "$demo/download"

# From Python, no mount needed: amlfs.Dataset and amlfs:// read the pinned bytes through
# the same block cache as the mounts (docs/python.md).
shell .venv/bin/python -c '
import amlfs, pandas
ds = amlfs.Dataset.get("weather", 2)
print(ds.ref, ds.file_count, "files, e.g.", ds.files[:2])
with ds.open("week27/mon.csv") as f:
    print("first line:", f.readline().decode().strip())
frame = pandas.read_csv("amlfs://weather:2/week28/fri.csv")
print("amlfs://weather:2/week28/fri.csv:", len(frame), "rows, max", frame.temp_c.max(), "C")'

# Output mode: a writable mount whose files are uploaded when closed, then registered.
out="$demo/out"
mkdir -p "$out"
trap '[[ -d "$mnt" ]] && grep -qs " $mnt " /proc/mounts && "${amlfs[@]}" unmount "$mnt";
      grep -qs " $out " /proc/mounts && "${amlfs[@]}" unmount "$out"' EXIT
step output mount local:Forecasts/run1 "$out" --register forecasts
mkdir -p "$out/daily"
for day in mon tue wed; do
  tail -n +2 "$demo/download/week28/$day.csv" | sort -t, -k2 -g | tail -1 > "$out/daily/$day-max.csv"
done
# A checkpoint saved the usual way, a temporary file renamed over the old one while
# the old one may still be uploading: storage keeps the newer one.
shell sh -c "head -c 64M /dev/urandom > '$out/model.ckpt' &&
             echo 'epoch 2 weights' > '$out/model.ckpt.tmp' && mv '$out/model.ckpt.tmp' '$out/model.ckpt'"
shell ls -l "$out" "$out/daily"
# One output mount per destination: a second one is refused, naming the first.
mkdir -p "$demo/out2"
if step output mount local:Forecasts/run1 "$demo/out2"; then
  echo "demo: a second output mount of the same destination should have been refused" >&2
  exit 1
fi
step unmount "$out"
shell cat "$demo/store/Forecasts/run1/model.ckpt"
step dataset show forecasts:1 --files

# Uploads never follow a link out of the folder they upload.
mkdir -p "$demo/results"
echo "accuracy,0.91" > "$demo/results/metrics.csv"
ln -s /etc/hostname "$demo/results/hostname"
if step upload "$demo/results" local:Results/1; then
  echo "demo: the upload should have refused the link" >&2
  exit 1
fi
rm "$demo/results/hostname"
step upload "$demo/results" local:Results/1

# A job: amlfs run mounts its input, gives it an output folder, uploads and registers
# that folder only if the job succeeds, and records which versions it read and made.
step run --input weather=weather:2 \
  --output summary=local:Summaries/{run-id},register=weekly-summary \
  -- sh -c 'for f in "$AMLFS_INPUT_weather"/*/*.csv; do
              printf "%s,%s\n" "${f#$AMLFS_INPUT_weather/}" "$(tail -n +2 "$f" | cut -d, -f2 | sort -g | tail -1)"
            done > {outputs.summary}/max-temperatures.csv'
step runs list
step lineage weekly-summary:1
step lineage weather:2

# A pipeline: steps wired by their outputs, each an `amlfs run`; a step whose command,
# code, env and exact input versions are unchanged is reused, not run again.
cat > "$demo/pipeline.yaml" <<'YAML'
schema: amlfs/pipeline/v1
name: weather-prep
steps:
  prep:
    command: [sh, -c, 'find "$AMLFS_INPUT_raw" -name "*.csv" | sort | xargs tail -q -n +2 > {outputs.clean}/all.csv']
    inputs: {raw: weather-raw}
    outputs:
      clean: local:prep/{run-id}
  stats:
    command: [sh, -c, 'cut -d, -f2 {inputs.data}/all.csv | sort -g | tail -1 > {outputs.max}/max.txt']
    inputs: {data: "steps.prep.outputs.clean,mode=download"}
    outputs:
      max: local:stats/{run-id},register=weather-max
YAML
step dataset register weather-raw --datastore local --path Weather/week27
step pipeline run "$demo/pipeline.yaml"     # both steps run
step pipeline run "$demo/pipeline.yaml"     # both reused: nothing runs
step dataset register weather-raw --datastore local --path Weather/week27 --path Weather/week28
step pipeline run "$demo/pipeline.yaml"     # new input: both run again
step pipeline runs
step lineage weather-max:2
# Intermediates (prep's outputs, named by amlfs because stats reads them) pile up: prune
# deletes their data once their pipeline runs are old enough and nothing kept needs them.
# The versions stay in the registry and in lineage, marked pruned; reading one says so.
sleep 1  # --older-than 0 means "ended before now", to the second
step pipeline prune --older-than 0 --dry-run
step pipeline prune --older-than 0
step lineage weather-max:2
if step download weather-prep.prep.clean:1 "$demo/pruned"; then
  echo "demo: the download of a pruned version should have been refused" >&2
  exit 1
fi

# A team catalog: the registry shared through objects in a datastore, with no server.
# A second state folder stands for a colleague's machine; both see every version, run
# and lineage, and versions registered at once get distinct numbers (docs/team.md).
step catalog attach local:catalog
peer=(env AMLFS_HOME="$demo/peer-state" .venv/bin/amlfs)
peer() { printf '\n\033[1m$ amlfs %s\033[0m   (on the second machine)\n' "$*"; "${peer[@]}" "$@"; }
peer datastore add local "file://$demo/store"
peer catalog attach local:catalog
peer dataset list
peer lineage weather-max:2
peer dataset register weather-week28 --datastore local --path Weather/week28
step dataset versions weather-week28   # registered on the other machine, seen here
step catalog status

# Files from a plain web server (no ETag, no ranges) are pinned by their MD5, computed
# when registered; a mount fetches such a file whole and checks it before serving a byte.
web_port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
.venv/bin/python -m http.server --bind 127.0.0.1 --directory "$demo/store" "$web_port" \
  >/dev/null 2>&1 &
web_pid=$!
trap '[[ -d "$mnt" ]] && grep -qs " $mnt " /proc/mounts && "${amlfs[@]}" unmount "$mnt";
      grep -qs " $out " /proc/mounts && "${amlfs[@]}" unmount "$out"; kill "$web_pid"' EXIT
for _ in $(seq 50); do  # bounded: five seconds for the server to listen
  .venv/bin/python -c "import socket; socket.create_connection(('127.0.0.1', $web_port), 1)" \
    2>/dev/null && break
  sleep 0.1
done
step datastore add web "http://127.0.0.1:$web_port"
step dataset register weather-web --datastore web --path 'Weather/week27/*.csv'
step dataset show weather-web --files

# A snapshot keeps a version's profile and, with --copy-to, a checked copy of its bytes:
# it reads the same after the source changes or vanishes.
step snapshot create weather:2 --name before-rewrite --copy-to local:Snapshots
step snapshot show weather:2@before-rewrite

echo
echo "Rewriting Weather/week27/mon.csv under the pinned versions..."
echo "hour,temp_c,humidity" > "$demo/store/Weather/week27/mon.csv"
if step dataset verify weather:2; then
  echo "demo: verify should have reported the change" >&2
  exit 1
fi
if step dataset verify weather-web; then  # the same change, seen by its MD5
  echo "demo: verify should have reported the change on the web server" >&2
  exit 1
fi
# What changed between the data a job read and the data there now: register what is
# there as a new version and diff the two, from the registry alone.
step dataset register weather --datastore local --path Weather/week27 --path Weather/week28 \
  --description "after week27/mon.csv was rewritten"
if step dataset diff weather:2 weather:3; then
  echo "demo: diff should have found the rewritten file" >&2
  exit 1
fi
# Cached blocks hold the pinned bytes, so a mount may still serve them; what it never
# does is fetch the changed file from storage. Emptying the cache shows that.
step cache clear
step mount weather:2 "$mnt"
if shell cat "$mnt/week27/mon.csv"; then
  echo "demo: the mount should have refused the changed file" >&2
  exit 1
fi
shell head -2 "$mnt/week27/tue.csv"   # the unchanged files still read
shell grep -h "changed since" "$AMLFS_HOME"/logs/*.log
step unmount "$mnt"
# The snapshot's copy still holds the bytes the version pinned.
step dataset verify weather:2@before-rewrite
step mount weather:2@before-rewrite "$mnt"
shell head -3 "$mnt/week27/mon.csv"
step unmount "$mnt"
echo
echo "demo: done. amlfs noticed the change instead of serving different bytes,"
echo "demo: and the snapshot still serves the bytes the version pinned."
echo "demo: state folder $AMLFS_HOME (delete $demo to start over)"
