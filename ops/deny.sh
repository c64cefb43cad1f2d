#!/usr/bin/env bash
# Dependency checks: `cargo deny check` (licenses, bans, sources, advisories) against deny.toml,
# offline. Run by ops/test.sh (so by .ci/run); runs on its own too: `ops/deny.sh [check...]`.
#
# The advisories come from the RustSec advisory-db snapshot at ../shared/advisory-db (or
# $PETREL_ADVISORY_DB), a plain directory. cargo-deny reads a database only out of a git clone
# under its db-path, so this builds one under target/advisory-dbs: a copy of the snapshot, one
# commit dated as the snapshot. cargo-deny never fetches it (--offline; github is not
# reachable from CI). See docs/dependencies.md.
set -euo pipefail
cd "$(dirname "$0")/.."

DENY_VERSION=0.20.2 # builds with the pinned toolchain (rust-toolchain.toml); cargo-deny's MSRV is 1.88
# The snapshot beside the checkout (../shared), else where these machines keep it.
SNAPSHOT="${PETREL_ADVISORY_DB:-}"
if [ -z "$SNAPSHOT" ]; then
  for candidate in ../shared/advisory-db /work/shared/advisory-db; do
    if [ -f "$candidate/SNAPSHOT" ]; then
      SNAPSHOT=$candidate
      break
    fi
  done
fi
# deny.toml: db-path = "target/advisory-dbs", db-urls = the RustSec default. cargo-deny opens
# <db-path>/<last url segment>-<xxhash64 of the lower-cased url>.
DB="target/advisory-dbs/advisory-db-3157b0e258782691"

if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $DENY_VERSION" ]; then
  printf '\n== installing cargo-deny %s\n' "$DENY_VERSION" >&2
  cargo install --locked "cargo-deny@$DENY_VERSION"
fi

if [ -z "$SNAPSHOT" ] || [ ! -f "$SNAPSHOT/SNAPSHOT" ] || [ ! -d "$SNAPSHOT/crates" ]; then
  # Without the database, the other three checks still run (and still fail the build); the
  # missing advisories check is said loudly rather than failing a checkout placed elsewhere.
  echo "ops/deny.sh: SKIPPED advisories: no advisory-db snapshot at ../shared/advisory-db or /work/shared/advisory-db (set PETREL_ADVISORY_DB)" >&2
  if [ $# -eq 0 ]; then
    set -- bans licenses sources
  fi
  cargo fetch --locked
  exec cargo deny --frozen check "$@"
fi
# Rebuilt only when the snapshot changes (its SNAPSHOT file names the upstream commit).
if ! cmp -s "$SNAPSHOT/SNAPSHOT" "$DB/SNAPSHOT" || [ ! -d "$DB/.git" ]; then
  rm -rf "$DB"
  mkdir -p "$DB"
  # The snapshot is read-only; the copy must stay removable.
  cp -R --no-preserve=mode,ownership "$SNAPSHOT/." "$DB/"
  # "rustsec/advisory-db snapshot <commit> (YYYY-MM-DD)": the date the snapshot was taken.
  date=$(sed -n 's/.*(\([0-9]\{4\}-[0-9]\{2\}-[0-9]\{2\}\)).*/\1/p' "$SNAPSHOT/SNAPSHOT" | head -n 1)
  [ -n "$date" ] || date=$(date -u -r "$SNAPSHOT/SNAPSHOT" +%F)
  (
    cd "$DB"
    export GIT_AUTHOR_DATE="${date}T00:00:00Z" GIT_COMMITTER_DATE="${date}T00:00:00Z"
    git init -q -b main .
    git add -A
    git -c user.name=petrel-ci -c user.email=ci@petrel.invalid -c commit.gpgsign=false \
      commit -q -m "$(cat SNAPSHOT)"
    # cargo-deny dates the database by max(HEAD commit, mtime of .git/HEAD) when there is no
    # FETCH_HEAD: give .git/HEAD the snapshot's date, so maximum-db-staleness measures the
    # snapshot's real age rather than the time of this copy.
    touch -d "${date}T00:00:00Z" .git/HEAD
  )
fi

# cargo-deny 0.20 has no `check --disable-fetch`: its global --offline (here --frozen, with
# --locked) disables fetching the database, and runs `cargo metadata` offline, so every crate
# (for every platform) must be downloaded first; `cargo fetch` does that, from crates.io.
cargo fetch --locked --quiet
cargo deny --frozen check "$@"
