#!/usr/bin/env bash
# Build the release artifacts for this machine's architecture into dist/:
#
#   backupagent-<version>-py3-none-any.whl         the wheel (pip install)
#   backupagent-<version>-linux-<arch>.tar.gz      self-contained one-dir build
#                                                  (PyInstaller: bundles CPython and
#                                                  every dependency; no host Python)
#   install.sh                                     the installer
#   backupagent.service                            the systemd unit (also in the tarball)
#   VERSION                                        the version, one line
#   SHA256SUMS                                     sha256sum of all of the above but VERSION
#
# and dist/site/, a tree ready to publish at BACKUPAGENT_BASE_URL (docs/install.md):
#
#   site/install.sh, site/install, site/VERSION, site/releases/<version>/<artifacts>
#
# Usage: packaging/build.sh [--out DIR] [--sums-only] [--skip-smoke]
#   --sums-only   only rewrite SHA256SUMS and site/ from what is in DIR (merge the
#                 tarball an arm64 builder produced into an amd64 build's dist/).
# Env: PYTHON (default python3, >= 3.9 with a shared libpython), PYINSTALLER_VERSION.
#
# Only the build machine's architecture can be built: PyInstaller bundles the
# running interpreter. Build arm64 on an arm64 machine and merge with --sums-only.
# The bundle needs a glibc at least as new as the builder's: build on the oldest
# distribution you support.
set -euo pipefail

PYINSTALLER_VERSION="${PYINSTALLER_VERSION:-6.22.3}"
PYTHON="${PYTHON:-python3}"

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="$root/dist"
sums_only=0
smoke=1

while [ $# -gt 0 ]; do
	case "$1" in
	--out)
		out="$2"
		shift 2
		;;
	--out=*)
		out="${1#--out=}"
		shift
		;;
	--sums-only)
		sums_only=1
		shift
		;;
	--skip-smoke)
		smoke=0
		shift
		;;
	-h | --help)
		sed -n '2,27p' "$0"
		exit 0
		;;
	*)
		echo "build.sh: unknown option $1 (see --help)" >&2
		exit 2
		;;
	esac
done

log() { printf '==> %s\n' "$*" >&2; }

version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$root/backupagent/__init__.py")"
[ -n "$version" ] || {
	echo "build.sh: cannot read __version__ from backupagent/__init__.py" >&2
	exit 1
}

case "$(uname -m)" in
x86_64 | amd64) arch=amd64 ;;
aarch64 | arm64) arch=arm64 ;;
*)
	echo "build.sh: unsupported build architecture $(uname -m) (amd64 and arm64 only)" >&2
	exit 1
	;;
esac

mkdir -p "$out"
out="$(cd "$out" && pwd)"
build="$root/build/packaging"

# A fixed timestamp for everything we pack, so two builds of one commit give
# tarballs that differ only where PyInstaller itself is not reproducible.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH="$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)"
fi
export SOURCE_DATE_EPOCH

write_sums() {
	log "SHA256SUMS and site/ in $out"
	(
		cd "$out"
		rm -f SHA256SUMS
		# shellcheck disable=SC2035 # names are ours, none starts with "-"
		sha256sum -- *.tar.gz *.whl install.sh backupagent.service 2>/dev/null | LC_ALL=C sort -k2 >SHA256SUMS.tmp || true
		[ -s SHA256SUMS.tmp ] || {
			echo "build.sh: no artifacts in $out" >&2
			exit 1
		}
		mv SHA256SUMS.tmp SHA256SUMS
		printf '%s\n' "$version" >VERSION
		rm -rf site
		mkdir -p "site/releases/$version"
		while read -r _ name; do
			cp -p "$name" "site/releases/$version/$name"
		done <SHA256SUMS
		cp -p SHA256SUMS "site/releases/$version/SHA256SUMS"
		cp -p VERSION site/VERSION
		cp -p install.sh site/install.sh
		cp -p install.sh site/install
	)
}

if [ "$sums_only" = 1 ]; then
	write_sums
	exit 0
fi

start=$(date +%s)
mkdir -p "$build"

log "wheel"
rm -f "$out"/backupagent-*.whl
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$out" "$root"
wheel="$(ls "$out"/backupagent-"$version"-*.whl)"
rm -rf "$root"/build/lib "$root"/build/bdist.* # setuptools leftovers

log "build venv (PyInstaller $PYINSTALLER_VERSION)"
venv="$build/venv-$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ ! -x "$venv/bin/python" ]; then
	"$PYTHON" -m venv "$venv"
	"$venv/bin/python" -m pip install --quiet --upgrade pip
fi
"$venv/bin/python" -m pip install --quiet "pyinstaller==$PYINSTALLER_VERSION" "$wheel"
# The wheel's version does not change between source edits: force our code in.
"$venv/bin/python" -m pip install --quiet --no-deps --force-reinstall "$wheel"

log "PyInstaller one-dir build"
rm -rf "$build/pyi"
(
	# Run outside the source tree so the bundle is made from the installed wheel,
	# exactly what users get, not from whatever else lies in the checkout.
	cd "$build"
	"$venv/bin/pyinstaller" --noconfirm --clean --log-level WARN \
		--distpath "$build/pyi/dist" --workpath "$build/pyi/work" \
		"$here/backupagent.spec"
)

name="backupagent-$version-linux-$arch"
stage="$build/stage/$name"
rm -rf "$build/stage"
mkdir -p "$stage/share"
cp -a "$build/pyi/dist/backupagent/." "$stage/"
cp "$root/systemd/backupagent.service" "$stage/share/backupagent.service"
printf '%s\n' "$version" >"$stage/VERSION"

if [ "$smoke" = 1 ]; then
	log "smoke test without the host's Python environment"
	got="$(cd / && env -i PATH=/usr/bin:/bin "$stage/backupagent" version)"
	case "$got" in
	"backupagent $version "*) ;;
	*)
		echo "build.sh: the built agent printed '$got', expected 'backupagent $version ...'" >&2
		exit 1
		;;
	esac
fi

log "tarball $name.tar.gz"
rm -f "$out/$name.tar.gz"
tar -C "$build/stage" --sort=name --owner=0 --group=0 --numeric-owner \
	--mtime="@$SOURCE_DATE_EPOCH" -cf - "$name" | gzip -n -6 >"$out/$name.tar.gz.tmp"
mv "$out/$name.tar.gz.tmp" "$out/$name.tar.gz"

cp "$root/install.sh" "$out/install.sh"
chmod 0755 "$out/install.sh"
cp "$root/systemd/backupagent.service" "$out/backupagent.service"
write_sums

log "done in $(($(date +%s) - start))s: $out"
