#!/usr/bin/env bash
# Builds lockd's Debian package with cargo-deb and checks it (issue 16): its contents, its
# maintainer scripts, and, unpacked into a scratch root, that the shipped config passes
# `lockd --check-config`. Prints the package's path.
#
# usage: scripts/package-deb.sh            (release build)
#        PROFILE=dev scripts/package-deb.sh  (the debug build CI made: quicker, same checks)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked --quiet
# The whole workspace's binaries, as .ci/run builds them, so that the same build serves both
# (building only these two packages resolves other features and compiles again).
cargo build --profile "$profile" --workspace --bins
bin=target/$dir
assets=target/deb-assets
rm -rf "$assets" && mkdir -p "$assets"
# The packaged unit: the binary in /usr/bin, run as the package's lockd user (the
# repository's unit runs /usr/local/bin/lockd as a dynamic user).
sed -e 's#/usr/local/bin/lockd#/usr/bin/lockd#g' \
    -e 's#^DynamicUser=yes#User=lockd\nGroup=lockd#' \
    -e 's#^\# systemd unit for lockd.*#\# systemd unit for lockd (Debian package).#' \
    dist/lockd.service >"$assets/lockd.service"
# The packaged config listens on loopback until the operator sets a key and an address
# (the sample's placeholder key is refused off loopback, so the service would not start).
sed -e 's#^address = "0.0.0.0"#address = "127.0.0.1"   \# set auth-key, then the address to serve#' \
    dist/lockd.toml >"$assets/lockd.toml"
grep -q '^address = "127.0.0.1"' "$assets/lockd.toml" || { echo "FAIL: the sample's address line changed"; exit 1; }
"$bin/lockd" --print-man | gzip -9n >"$assets/lockd.1.gz"
"$bin/lockctl" man | gzip -9n >"$assets/lockctl.1.gz"
for b in lockd lockctl; do
    if [ "$b" = lockd ]; then gen() { "$bin/lockd" --print-completions "$1"; }
    else gen() { "$bin/lockctl" completions "$1"; }; fi
    gen bash >"$assets/$b.bash"
    gen zsh >"$assets/_$b"
    gen fish >"$assets/$b.fish"
done
rm -f target/debian/lockd_*.deb
# --strip: the release profile keeps line tables for profiling (debug = 1); the package
# ships the binaries without them (stripped, not a separate -dbg package).
cargo deb -p lockd --profile "$profile" --no-build --quiet --strip
deb=$(ls -t target/debian/lockd_*.deb | head -1)

# What is in it, and with which modes.
contents=$(dpkg-deb --contents "$deb")
for path in ./usr/bin/lockd ./usr/bin/lockctl ./lib/systemd/system/lockd.service \
    ./etc/lockd/lockd.toml ./usr/share/man/man1/lockd.1.gz ./usr/share/man/man1/lockctl.1.gz \
    ./usr/share/bash-completion/completions/lockctl ./usr/share/zsh/vendor-completions/_lockctl \
    ./usr/share/fish/vendor_completions.d/lockctl.fish ./usr/share/doc/lockd/operations.md; do
    grep -q " $path\$" <<<"$contents" || { echo "FAIL: $path is not in $deb"; exit 1; }
done
grep -q '^-rw------- .* \./etc/lockd/lockd.toml$' <<<"$contents" \
    || { echo "FAIL: the config is not 0600"; exit 1; }
# The maintainer scripts make the user and its data directory, and the config is a conffile.
ctl=$(mktemp -d)
dpkg-deb --control "$deb" "$ctl"
grep -q 'adduser --system' "$ctl/postinst" || { echo "FAIL: postinst makes no system user"; exit 1; }
grep -q '/var/lib/lockd' "$ctl/postinst" || { echo "FAIL: postinst makes no data directory"; exit 1; }
grep -qx '/etc/lockd/lockd.toml' "$ctl/conffiles" || { echo "FAIL: the config is not a conffile"; exit 1; }
sh -n "$ctl/postinst" && sh -n "$ctl/prerm" && sh -n "$ctl/postrm"
grep -q '^Depends:.*adduser' "$ctl/control" || { echo "FAIL: no dependency on adduser"; exit 1; }
# Unpacked into a scratch root: the shipped config is accepted by the shipped binary,
# and the unit names the shipped paths.
root=$(mktemp -d)
dpkg-deb -x "$deb" "$root"
"$root/usr/bin/lockd" --check-config --config "$root/etc/lockd/lockd.toml"
for b in lockd lockctl; do
    if readelf -S "$root/usr/bin/$b" | grep -qE '\.debug_(info|line|str)'; then
        echo "FAIL: /usr/bin/$b in the package has debug sections (not stripped)"; exit 1
    fi
done
grep -q '^ExecStart=/usr/bin/lockd ' "$root/lib/systemd/system/lockd.service"
grep -q '^User=lockd$' "$root/lib/systemd/system/lockd.service"
if command -v systemd-analyze >/dev/null 2>&1; then
    # The unit's syntax (paths are the scratch root's).
    sed "s#/usr/bin/lockd#$root/usr/bin/lockd#g" "$root/lib/systemd/system/lockd.service" >"$root/lockd.service"
    systemd-analyze verify "$root/lockd.service" 2>&1 | grep -v 'Failed to resolve\|credential\|CREDENTIALS' || true
fi
if command -v lintian >/dev/null 2>&1; then
    lintian --no-tag-display-limit "$deb" || true
fi
rm -rf "$ctl" "$root"
echo "package: $deb"
