#!/usr/bin/env bash
# Build the libFuzzer targets (clang, ASan+UBSan) and run each briefly.
# FUZZ_SECONDS (default 20) per target. Crashes fail the script and leave
# the reproducer in build-fuzz/crashes/.
set -euo pipefail
secs=${FUZZ_SECONDS:-20}
dir=build-fuzz
if [ ! -f "$dir/build.ninja" ]; then
  CC=clang CXX=clang++ cmake -S . -B "$dir" -G Ninja -DAGENTSHIM_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$dir" -j "$(nproc)"
mkdir -p "$dir/crashes" "$dir/corpus"
status=0
for f in "$dir"/tests/fuzz/*_fuzz; do
  name=$(basename "$f")
  mkdir -p "$dir/corpus/$name"
  echo "fuzz: $name for ${secs}s"
  if ! "$f" -max_total_time="$secs" -max_len=8192 -timeout=10 -artifact_prefix="$dir/crashes/$name-" \
      "$dir/corpus/$name" >"$dir/$name.log" 2>&1; then
    echo "fuzz: $name FAILED; see $dir/$name.log and $dir/crashes/" >&2
    tail -30 "$dir/$name.log" >&2
    status=1
  else
    grep -E "^#[0-9]+ *DONE" "$dir/$name.log" | tail -1 || true
  fi
done
exit $status
