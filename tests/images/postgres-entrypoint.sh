#!/bin/sh
# Entrypoint for the locally built test image backupagent-test/postgres.
# It follows the official `postgres` image's environment contract (the part
# the agent relies on): POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB,
# POSTGRES_HOST_AUTH_METHOD, PGDATA=/var/lib/postgresql/data, port 5432, and
# a temporary socket-only server during initialisation (so a TCP readiness
# probe only succeeds once the real server is up), as upstream does.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then set -- postgres "$@"; fi
if [ "$1" != postgres ]; then exec "$@"; fi

if [ "$(id -u)" = 0 ]; then
	mkdir -p "$PGDATA" /var/run/postgresql
	chown -R postgres:postgres "$PGDATA" /var/run/postgresql
	chmod 700 "$PGDATA"
	chmod 2775 /var/run/postgresql
	exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
	user="${POSTGRES_USER:-postgres}"
	db="${POSTGRES_DB:-$user}"
	method="${POSTGRES_HOST_AUTH_METHOD:-}"
	if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$method" != trust ]; then
		echo "Error: Database is uninitialized and superuser password is not specified." >&2
		echo "       Set POSTGRES_PASSWORD, or POSTGRES_HOST_AUTH_METHOD=trust." >&2
		exit 1
	fi
	[ -n "$method" ] || method=scram-sha-256
	if [ -n "${POSTGRES_PASSWORD:-}" ]; then
		pwfile="$(mktemp)"
		printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
		initdb --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host="$method" ${POSTGRES_INITDB_ARGS:-} >/dev/null
		rm -f "$pwfile"
	else
		initdb --username="$user" --auth-local=trust --auth-host="$method" ${POSTGRES_INITDB_ARGS:-} >/dev/null
	fi
	printf 'host all all all %s\n' "$method" >>"$PGDATA/pg_hba.conf"
	printf "listen_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
	pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -p 5432" start >/dev/null
	if [ "$db" != postgres ]; then
		printf 'CREATE DATABASE :"db";\n' |
			psql -v ON_ERROR_STOP=1 -q --username "$user" --dbname postgres --set db="$db"
	fi
	for f in /docker-entrypoint-initdb.d/*; do
		case "$f" in
		*.sql) psql -v ON_ERROR_STOP=1 -q --username "$user" --dbname "$db" -f "$f" ;;
		*.sh) . "$f" ;;
		esac
	done
	pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
	echo "PostgreSQL init process complete; ready for start up."
fi
exec "$@"
