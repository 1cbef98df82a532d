#!/usr/bin/env bash
# Builds phoenixfsd as it was at the last commit of the previous state-region layout (6: before
# FUSE passthrough brought layout 7), for the live-upgrade tests across layout versions
# (tests/soak.rs `test_soak_live_upgrades_across_layouts*`), and prints the binary's path.
# The source is this repository's own history (git archive of PREVIOUS below); the build has its
# own target directory, target/previous-layout/, and is done once (later runs print the path).
#
#   scripts/build-previous.sh            # prints e.g. target/previous-layout/target/x86_64-unknown-linux-gnu/release/phoenixfsd
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"

# Layout 6 (it reads and writes layout 5 too), the last commit before FUSE passthrough's merge.
PREVIOUS=a84d2fe17a4c5a71932e9cfd360280601028612c
dir="$PWD/target/previous-layout"
bin="$dir/target/$(rustc -vV | sed -n "s/^host: //p")/release/phoenixfsd"
if [ -x "$bin" ] && [ "$(cat "$dir/commit" 2>/dev/null)" = "$PREVIOUS" ]; then
    echo "$bin"
    exit 0
fi
if ! git cat-file -e "$PREVIOUS^{commit}" 2>/dev/null; then
    echo "error: commit $PREVIOUS (phoenixfsd with state layout 6) is not in this clone's history;" \
        "a shallow clone lacks it: run git fetch --unshallow, or clone without --depth" >&2
    exit 1
fi
echo "[build-previous] building phoenixfsd at $PREVIOUS (state layout 6) in $dir" >&2
rm -rf "$dir/src" "$dir/commit"
mkdir -p "$dir/src"
git archive "$PREVIOUS" | tar -x -C "$dir/src"
# Its own .cargo/config.toml (static, host tuple) applies: the build runs in its tree.
(cd "$dir/src" && CARGO_TARGET_DIR="$dir/target" nice -n 5 cargo build --release --locked --bin phoenixfsd >&2)
echo "$PREVIOUS" >"$dir/commit"
echo "$bin"
