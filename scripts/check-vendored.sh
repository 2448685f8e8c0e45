#!/usr/bin/env bash
# Fails when crates.io has a newer release of a vendored, patched crate (today: actix-http,
# vendor/actix-http, used through [patch.crates-io] in Cargo.toml), so the patch is carried
# over to the new release (or dropped, if upstream fixed the problem) instead of the build
# quietly staying on an old copy. .ci/run calls this.
#
# It reads the crates.io sparse index (https://index.crates.io), the same one cargo uses.
# When the index cannot be reached it says so loudly and exits 0 (a network blip should not
# fail CI; cargo itself will complain if crates.io is really down); REQUIRE_INDEX=1 makes
# that case fail too.
set -euo pipefail
cd "$(dirname "$0")/.."

status=0
for dir in vendor/actix-http; do
  name=$(sed -n 's/^name = "\(.*\)"$/\1/p' "$dir/Cargo.toml" | head -1)
  have=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$dir/Cargo.toml" | head -1)
  if [ -z "$name" ] || [ -z "$have" ]; then
    echo "check-vendored: cannot read the name and version from $dir/Cargo.toml" >&2
    exit 1
  fi
  # Sparse index path: 1, 2 or 3 letters have their own folders, longer names ab/cd/name.
  lower=$(printf '%s' "$name" | tr 'A-Z' 'a-z')
  case ${#lower} in
    1) path=1/$lower ;;
    2) path=2/$lower ;;
    3) path=3/${lower:0:1}/$lower ;;
    *) path=${lower:0:2}/${lower:2:2}/$lower ;;
  esac
  url=https://index.crates.io/$path
  if ! index=$(curl -fsS --retry 3 --retry-delay 2 --max-time 30 "$url"); then
    echo "check-vendored: NOT CHECKED: cannot read $url; whether $name has a release newer than the vendored $have is unknown." >&2
    [ "${REQUIRE_INDEX:-0}" = 1 ] && exit 1
    continue
  fi
  # The newest release of the same major version that is not yanked and not a pre-release:
  # the one `cargo update` would move to without the [patch].
  newest=$(printf '%s\n' "$index" | python3 -c '
import json, sys
have = sys.argv[1]
def key(v):
    return tuple(int(x) for x in v.split("+")[0].split("."))
best = have
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    r = json.loads(line)
    v = r["vers"]
    if r.get("yanked") or "-" in v.split("+")[0]:
        continue
    if key(v)[0] == key(have)[0] and key(v) > key(best):
        best = v
print(best)
' "$have")
  if [ "$newest" != "$have" ]; then
    cat >&2 <<EOF
check-vendored: $name $newest is on crates.io; $dir is the patched copy of $have.
  Carry the patch over (vendor/README.md, "To move to a newer $name"):
  1. read the new release's changes: does upstream now release the idle buffers, skip the
     linger after an upgraded response, check frame lengths at the header and inflate
     permessage-deflate messages within the size limit (vendor/README.md)? If all, remove
     $dir and its [patch.crates-io] entry in Cargo.toml, and stop here.
  2. otherwise replace $dir with the $newest release from crates.io (minus examples, tests and
     benches, licence files kept), then: patch -p1 -d $dir < vendor/$name.patch
  3. bump the version requirement in Cargo.toml, cargo update -p $name, run bash scripts/test.sh
     and the idle case of scripts/bench.sh (memory per connection), and update vendor/README.md.
EOF
    status=1
  else
    echo "check-vendored: $name $have is the newest $name ${have%%.*}.x release on crates.io"
  fi
done
exit $status
