#!/bin/sh
# backupagent installer.
#
#   curl -fsSL https://backupagent.ai/api/install | sh
#   curl -fsSL https://backupagent.ai/api/install | sh -s -- --token TOKEN
#   sh install.sh --token - < token.txt
#
# Installs the self-contained agent for this machine (Linux amd64/arm64) under
# /opt/backupagent/<version>, links /usr/local/bin/backupagent, creates the
# `backupagent` system user, /etc/backupagent and /var/lib/backupagent, and
# installs the systemd unit. Every download is checked against the release's
# SHA256SUMS. A rerun upgrades in place and keeps the configuration and the
# registration. The service is started only once the agent is registered.
#
# Options:
#   --token TOKEN     register with this one-time token, then enable and start
#   --token -         read the token from stdin (keeps it out of the process list)
#   --token-file F    read the token from file F
#   --server URL      control plane to register with (default: the hosted service)
#   --version V       install version V (default: latest; env BACKUPAGENT_VERSION)
#   --base-url URL    where the artifacts are (env BACKUPAGENT_BASE_URL)
#   --no-start        install (and register) but do not enable or start the service
#   --dry-run         download and verify, then print what would be done; change nothing
#   --uninstall       remove the agent, unit and user; keep config, state and backups
#   --purge           with --uninstall: also remove /etc/backupagent and /var/lib/backupagent
#   -h, --help        this help
#
# Artifact layout at BACKUPAGENT_BASE_URL (default https://backupagent.ai/api):
#   VERSION                                          latest version, one line
#   releases/<version>/SHA256SUMS
#   releases/<version>/backupagent-<version>-linux-<amd64|arm64>.tar.gz
#
# The whole script is inside functions and runs from the last line, so a
# download cut short runs nothing.

set -eu

DEFAULT_BASE_URL="https://backupagent.ai/api"
PREFIX="/opt/backupagent"
BIN_LINK="/usr/local/bin/backupagent"
CONFIG_DIR="/etc/backupagent"
STATE_DIR="/var/lib/backupagent"
UNIT_DIR="/etc/systemd/system"
UNIT_NAME="backupagent.service"
SERVICE_USER="backupagent"

# Set by parse_args / main.
base_url=""
version=""
token=""
token_source=""
server=""
no_start=0
dry_run=0
uninstall=0
purge=0
SUDO=""
tmp=""
downloader=""

say() {
	printf '%s\n' "$*"
}

warn() {
	printf 'backupagent-install: warning: %s\n' "$*" >&2
}

die() {
	printf 'backupagent-install: error: %s\n' "$*" >&2
	exit 1
}

# Run a command that changes the system (as root), or only show it with --dry-run.
act() {
	if [ "$dry_run" = 1 ]; then
		printf '[dry-run] %s\n' "$*"
		return 0
	fi
	if [ -n "$SUDO" ]; then
		"$SUDO" "$@"
	else
		"$@"
	fi
}

# Read-only commands that may need root (reading /etc/backupagent).
as_root() {
	if [ -n "$SUDO" ]; then
		"$SUDO" "$@"
	else
		"$@"
	fi
}

usage() {
	sed -n '2,34p' "$0" 2>/dev/null | sed 's/^# \{0,1\}//' || true
}

parse_args() {
	while [ $# -gt 0 ]; do
		case "$1" in
		--token)
			[ $# -ge 2 ] || die "--token needs a value (the token, or - to read it from stdin)"
			token_source="arg"
			token="$2"
			shift 2
			;;
		--token=*)
			token_source="arg"
			token="${1#--token=}"
			shift
			;;
		--token-file)
			[ $# -ge 2 ] || die "--token-file needs a path"
			token_source="file"
			token="$2"
			shift 2
			;;
		--server)
			[ $# -ge 2 ] || die "--server needs a URL"
			server="$2"
			shift 2
			;;
		--version)
			[ $# -ge 2 ] || die "--version needs a version, e.g. --version 0.1.0"
			version="$2"
			shift 2
			;;
		--base-url)
			[ $# -ge 2 ] || die "--base-url needs a URL"
			base_url="$2"
			shift 2
			;;
		--no-start) no_start=1 && shift ;;
		--dry-run) dry_run=1 && shift ;;
		--uninstall) uninstall=1 && shift ;;
		--purge) purge=1 && shift ;;
		-h | --help)
			usage
			exit 0
			;;
		*) die "unknown option '$1' (see --help)" ;;
		esac
	done
	if [ "$purge" = 1 ] && [ "$uninstall" = 0 ]; then
		die "--purge only goes with --uninstall"
	fi
	if [ "$uninstall" = 1 ] && [ -n "$token_source" ]; then
		die "--uninstall and --token do not go together"
	fi
}

detect_platform() {
	os="${BACKUPAGENT_TEST_UNAME_S:-$(uname -s)}"
	machine="${BACKUPAGENT_TEST_UNAME_M:-$(uname -m)}"
	case "$os" in
	Linux) ;;
	*) die "backupagent runs on Linux only; this is $os. Install it on the database host, or use the Python package: pip install backupagent" ;;
	esac
	case "$machine" in
	x86_64 | amd64) arch="amd64" ;;
	aarch64 | arm64 | armv8*) arch="arm64" ;;
	*) die "unsupported architecture '$machine': backupagent builds exist for x86_64 (amd64) and aarch64 (arm64). On other machines use the Python package (Python >= 3.9): pip install backupagent" ;;
	esac
	if command -v ldd >/dev/null 2>&1 && ldd --version 2>&1 | grep -qi musl; then
		die "this system uses musl libc (e.g. Alpine); the backupagent build needs glibc. Use the Python package instead: pip install backupagent"
	fi
}

need_root() {
	if [ "$(id -u)" = 0 ]; then
		SUDO=""
	elif [ "$dry_run" = 1 ]; then
		SUDO="" # nothing is changed, so nothing needs root
	elif command -v sudo >/dev/null 2>&1; then
		say "==> not running as root: using sudo for the steps that need it"
		SUDO="sudo"
		sudo -v || die "sudo failed; run the installer as root: curl -fsSL <url> | sudo sh"
	else
		die "this installer needs root and sudo is not installed: run it as root (su -c 'sh install.sh')"
	fi
}

pick_downloader() {
	if command -v curl >/dev/null 2>&1; then
		downloader="curl"
	elif command -v wget >/dev/null 2>&1; then
		downloader="wget"
	else
		die "neither curl nor wget is installed; install one (apt-get install curl, or dnf install curl) and run this again"
	fi
}

check_base_url() {
	case "$base_url" in
	https://*) ;;
	http://127.0.0.1 | http://127.0.0.1[:/]* | http://localhost | http://localhost[:/]* | http://\[::1\] | http://\[::1\][:/]*) ;;
	*) die "BACKUPAGENT_BASE_URL must be an https:// URL (plain http is allowed only for 127.0.0.1/localhost); got '$base_url'" ;;
	esac
	base_url="${base_url%/}"
}

# fetch URL DEST
fetch() {
	case "$1" in
	https://*)
		if [ "$downloader" = curl ]; then
			curl -fsSL --proto '=https' --proto-redir '=https' --tlsv1.2 --retry 3 -o "$2" "$1" ||
				die "download failed: $1 (curl exit $?)"
		else
			wget -q --https-only --tries=3 -O "$2" "$1" || die "download failed: $1 (wget exit $?)"
		fi
		;;
	*)
		if [ "$downloader" = curl ]; then
			curl -fsSL --retry 3 -o "$2" "$1" || die "download failed: $1 (curl exit $?)"
		else
			wget -q --tries=3 -O "$2" "$1" || die "download failed: $1 (wget exit $?)"
		fi
		;;
	esac
}

resolve_version() {
	if [ -z "$version" ] || [ "$version" = latest ]; then
		fetch "$base_url/VERSION" "$tmp/VERSION"
		version="$(head -n 1 "$tmp/VERSION" | tr -d ' \r\t')"
	fi
	version="${version#v}"
	case "$version" in
	"" | *[!0-9A-Za-z.+_-]* | .*)
		die "invalid version '$version' (from ${BACKUPAGENT_VERSION:+BACKUPAGENT_VERSION}${BACKUPAGENT_VERSION:-$base_url/VERSION})"
		;;
	esac
}

# verify FILE NAME: FILE's SHA-256 must be the one SHA256SUMS lists for NAME.
verify() {
	expected="$(awk -v n="$2" '$2 == n || $2 == "*" n { print $1; exit }' "$tmp/SHA256SUMS")"
	[ -n "$expected" ] || die "$2 is not listed in SHA256SUMS of release $version; refusing to install it"
	actual="$(sha256sum "$1" | awk '{ print $1 }')"
	if [ "$actual" != "$expected" ]; then
		die "checksum mismatch for $2: expected $expected, got $actual. The download is corrupt or was tampered with; nothing was installed"
	fi
}

download_release() {
	command -v sha256sum >/dev/null 2>&1 || die "sha256sum is missing (install coreutils); it is needed to verify the download"
	command -v tar >/dev/null 2>&1 || die "tar is missing; install tar and gzip"
	command -v gzip >/dev/null 2>&1 || die "gzip is missing; install gzip"
	rel="$base_url/releases/$version"
	name="backupagent-$version-linux-$arch"
	say "==> backupagent $version for linux/$arch from $base_url"
	fetch "$rel/SHA256SUMS" "$tmp/SHA256SUMS"
	if ! awk -v n="$name.tar.gz" '$2 == n || $2 == "*" n { f = 1 } END { exit !f }' "$tmp/SHA256SUMS"; then
		die "release $version has no build for linux/$arch ($name.tar.gz is not in SHA256SUMS)"
	fi
	fetch "$rel/$name.tar.gz" "$tmp/$name.tar.gz"
	verify "$tmp/$name.tar.gz" "$name.tar.gz"
	say "==> checksum ok: $name.tar.gz"
	# Check the layout before anything is unpacked anywhere.
	tar -tzf "$tmp/$name.tar.gz" >"$tmp/contents" 2>/dev/null || die "cannot read $name.tar.gz (not a gzip'd tar)"
	for f in "$name/backupagent" "$name/share/$UNIT_NAME" "$name/VERSION"; do
		grep -Fqx "$f" "$tmp/contents" || die "$name.tar.gz does not contain $f"
	done
	if grep -v "^$name/" "$tmp/contents" | grep -q . || grep -q '\(^\|/\)\.\.\(/\|$\)' "$tmp/contents"; then
		die "$name.tar.gz has paths outside $name/; refusing it"
	fi
	got="$(tar -xzOf "$tmp/$name.tar.gz" "$name/VERSION" | head -n 1)"
	[ "$got" = "$version" ] || die "$name.tar.gz holds version '$got', not $version"
}

# Unpack beside the installed versions (not in /tmp, often small or noexec) and
# check the agent runs here before anything else changes.
stage_release() {
	stage="$PREFIX/.$version.new"
	act install -d -m 0755 -o root -g root "$PREFIX"
	act rm -rf "$stage"
	act mkdir -m 0755 "$stage"
	act tar -xzf "$tmp/$name.tar.gz" -C "$stage" --strip-components=1 --no-same-owner
	act chown -R root:root "$stage"
	act chmod -R go-w "$stage"
	[ "$dry_run" = 0 ] || return 0
	if ! as_root "$stage/backupagent" version >/dev/null 2>&1; then
		why="$(as_root "$stage/backupagent" version 2>&1 | tail -n 1 || true)"
		act rm -rf "$stage"
		as_root rmdir "$PREFIX" 2>/dev/null || true
		die "the agent does not run on this machine ($why): its glibc may be older than the build's (see docs/install.md), or $PREFIX is on a noexec mount"
	fi
}

nologin_shell() {
	for s in /usr/sbin/nologin /sbin/nologin /bin/false; do
		if [ -x "$s" ]; then
			printf '%s\n' "$s"
			return 0
		fi
	done
	printf '/bin/false\n'
}

create_user() {
	if id "$SERVICE_USER" >/dev/null 2>&1; then
		say "==> user $SERVICE_USER exists"
		return 0
	fi
	shell="$(nologin_shell)"
	if command -v useradd >/dev/null 2>&1; then
		act useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
			--shell "$shell" --comment "backupagent database backup agent" "$SERVICE_USER"
	elif command -v adduser >/dev/null 2>&1; then
		act adduser --system --group --home "$STATE_DIR" --no-create-home \
			--shell "$shell" "$SERVICE_USER"
	else
		die "neither useradd nor adduser is available to create the $SERVICE_USER user"
	fi
}

make_dirs() {
	act install -d -m 0755 -o root -g root "$PREFIX"
	act install -d -m 0750 -o root -g "$SERVICE_USER" "$CONFIG_DIR"
	act install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR"
	# After an uninstall that kept the state, a new user may have a new uid.
	if [ -d "$STATE_DIR" ] && [ "$dry_run" = 0 ] &&
		[ -n "$(find "$STATE_DIR" \( ! -user "$SERVICE_USER" -o ! -group "$SERVICE_USER" \) -print 2>/dev/null | head -n 1)" ]; then
		act chown -R "$SERVICE_USER:$SERVICE_USER" "$STATE_DIR"
	fi
}

install_release() {
	dest="$PREFIX/$version"
	previous="$(readlink "$PREFIX/current" 2>/dev/null || true)"
	if [ "$previous" = "$version" ]; then
		say "==> reinstalling $version in $dest"
	elif [ -n "$previous" ]; then
		say "==> upgrading from $previous to $version"
	fi
	# Swap the staged copy in: the running agent's files stay whole until the
	# service restarts.
	act rm -rf "$dest"
	act mv "$PREFIX/.$version.new" "$dest"
	act ln -sfn "$version" "$PREFIX/.current.new"
	act mv -f -T "$PREFIX/.current.new" "$PREFIX/current"
	[ -d "$(dirname "$BIN_LINK")" ] || act install -d -m 0755 "$(dirname "$BIN_LINK")"
	act ln -sfn "$PREFIX/current/backupagent" "$BIN_LINK"
	# Keep the version just replaced for a rollback; remove older ones.
	for d in "$PREFIX"/*; do
		[ -d "$d" ] || continue
		v="$(basename "$d")"
		[ "$v" = "$version" ] || [ "$v" = "$previous" ] || [ "$v" = current ] || act rm -rf "$d"
	done
	[ -d "$UNIT_DIR" ] || act install -d -m 0755 "$UNIT_DIR"
	act install -m 0644 -o root -g root "$dest/share/$UNIT_NAME" "$UNIT_DIR/$UNIT_NAME"
	if has_systemd; then
		act systemctl daemon-reload
	fi
}

has_systemd() {
	[ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

is_registered() {
	as_root test -s "$CONFIG_DIR/api-key" && as_root grep -q '^agentId:' "$CONFIG_DIR/agent.yaml" 2>/dev/null
}

# The daemon runs as $SERVICE_USER and refuses a key file others can read:
# the key is the service user's alone, agent.yaml readable by its group.
fix_key_permissions() {
	if as_root test -e "$CONFIG_DIR/api-key"; then
		act chown "$SERVICE_USER:$SERVICE_USER" "$CONFIG_DIR/api-key"
		act chmod 0600 "$CONFIG_DIR/api-key"
	fi
	if as_root test -e "$CONFIG_DIR/agent.yaml"; then
		act chown "root:$SERVICE_USER" "$CONFIG_DIR/agent.yaml"
		act chmod 0640 "$CONFIG_DIR/agent.yaml"
	fi
}

read_token() {
	case "$token_source" in
	"") return 0 ;;
	arg)
		if [ "$token" = "-" ]; then
			IFS= read -r token || true
		fi
		;;
	file)
		[ -r "$token" ] || die "cannot read --token-file $token"
		token="$(head -n 1 "$token")"
		;;
	esac
	token="$(printf '%s' "$token" | tr -d ' \r\t')"
	[ -n "$token" ] || die "the registration token is empty (with 'curl ... | sh', stdin is the script: use --token TOKEN or --token-file FILE)"
	# Handed to `backupagent register` in a file, never on its command line.
	(umask 077 && printf '%s\n' "$token" >"$tmp/token")
	token="<redacted>"
}

register() {
	[ -n "$token_source" ] || return 0
	if is_registered; then
		say "==> already registered ($CONFIG_DIR/agent.yaml); keeping that registration"
		say "    to replace it: sudo backupagent register --force --token-file FILE"
		return 0
	fi
	say "==> registering this host"
	if [ "$dry_run" = 1 ]; then
		act "$BIN_LINK" register --token-file "<token>" ${server:+--server "$server"}
		return 0
	fi
	# --token-file: the token is in a 0600 file of ours, not in the process list.
	set +e
	if [ -n "$server" ]; then
		as_root "$BIN_LINK" register --token-file "$tmp/token" --server "$server"
	else
		as_root "$BIN_LINK" register --token-file "$tmp/token"
	fi
	rc=$?
	set -e
	case "$rc" in
	0) ;;
	5) say "==> already registered; keeping that registration" ;;
	*) die "registration failed (exit $rc, see above). The agent is installed but not started; register with: sudo backupagent register --token-file FILE, then: sudo systemctl enable --now backupagent" ;;
	esac
}

start_service() {
	if ! has_systemd; then
		say ""
		say "systemd is not running on this machine, so the service was not set up."
		say "Run the agent by hand (or under your init system) as the $SERVICE_USER user:"
		say "  runuser -u $SERVICE_USER -- env BACKUPAGENT_LOG_FORMAT=json $BIN_LINK run"
		if ! is_registered; then
			say "after registering it: $BIN_LINK register --token-file FILE"
		fi
		return 0
	fi
	if ! is_registered; then
		say ""
		say "Installed. Register this host, then start the agent:"
		say "  sudo backupagent register --token-file FILE     (or --token -, reading stdin)"
		say "  sudo systemctl enable --now backupagent"
		say "Or run standalone (no control plane): backupagent run --config-file FILE.yaml"
		return 0
	fi
	if [ "$no_start" = 1 ]; then
		say ""
		say "Installed (--no-start). Start the agent with: sudo systemctl enable --now backupagent"
		return 0
	fi
	act systemctl enable "$UNIT_NAME"
	# restart: an upgrade takes effect now; running backups get the unit's graceful stop.
	act systemctl restart "$UNIT_NAME"
	say "==> backupagent is running: systemctl status backupagent; journalctl -u backupagent"
}

do_uninstall() {
	say "==> uninstalling backupagent"
	if has_systemd; then
		if [ "$dry_run" = 1 ] || systemctl cat "$UNIT_NAME" >/dev/null 2>&1; then
			act systemctl disable --now "$UNIT_NAME" || warn "could not stop $UNIT_NAME"
		fi
	fi
	if [ -e "$UNIT_DIR/$UNIT_NAME" ]; then
		act rm -f "$UNIT_DIR/$UNIT_NAME"
		if has_systemd; then
			act systemctl daemon-reload
		fi
	fi
	if [ -L "$BIN_LINK" ]; then
		case "$(readlink "$BIN_LINK")" in
		"$PREFIX"/*) act rm -f "$BIN_LINK" ;;
		*) warn "$BIN_LINK does not point into $PREFIX; left alone" ;;
		esac
	fi
	if [ -d "$PREFIX" ]; then
		act rm -rf "$PREFIX"
	fi
	if id "$SERVICE_USER" >/dev/null 2>&1; then
		if command -v userdel >/dev/null 2>&1; then
			act userdel "$SERVICE_USER"
		else
			act deluser --system "$SERVICE_USER"
		fi
	fi
	if getent group "$SERVICE_USER" >/dev/null 2>&1; then
		act groupdel "$SERVICE_USER"
	fi
	if [ "$purge" = 1 ]; then
		act rm -rf "$CONFIG_DIR" "$STATE_DIR"
		say "==> removed $CONFIG_DIR and $STATE_DIR"
	else
		for d in "$CONFIG_DIR" "$STATE_DIR"; do
			[ -d "$d" ] && say "==> kept $d (remove it with --uninstall --purge)"
		done
	fi
	say "==> backupagent uninstalled; backups in your targets were not touched"
}

cleanup() {
	if [ -n "$tmp" ] && [ -d "$tmp" ]; then
		rm -rf "$tmp"
	fi
}

main() {
	parse_args "$@"
	detect_platform
	need_root
	if [ "$uninstall" = 1 ]; then
		do_uninstall
		return 0
	fi
	base_url="${base_url:-${BACKUPAGENT_BASE_URL:-$DEFAULT_BASE_URL}}"
	version="${version:-${BACKUPAGENT_VERSION:-latest}}"
	check_base_url
	pick_downloader
	tmp="$(mktemp -d "${TMPDIR:-/tmp}/backupagent-install.XXXXXX")"
	chmod 0755 "$tmp" # a sudo'd root must read it; the token file inside stays 0600
	trap cleanup EXIT
	trap 'cleanup; exit 130' INT TERM
	read_token
	resolve_version
	download_release
	stage_release
	create_user
	make_dirs
	install_release
	fix_key_permissions
	register
	fix_key_permissions
	start_service
	if [ "$dry_run" = 1 ]; then
		say "==> dry run: nothing was changed"
	else
		say "==> installed backupagent $version: $BIN_LINK -> $PREFIX/$version"
	fi
}

main "$@"
