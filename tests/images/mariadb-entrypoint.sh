#!/bin/sh
# Entrypoint for the locally built test image backupagent-test/mariadb.
# It follows the official `mariadb` image's environment contract (the part
# the agent relies on): MARIADB_ROOT_PASSWORD (or MYSQL_ROOT_PASSWORD),
# MARIADB_ALLOW_EMPTY_ROOT_PASSWORD, MARIADB_DATABASE, MARIADB_USER and
# MARIADB_PASSWORD, data in /var/lib/mysql, port 3306, and a socket-only
# temporary server during initialisation, as upstream does.
set -eu
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then set -- mariadbd "$@"; fi
if [ "$1" != mariadbd ] && [ "$1" != mysqld ]; then exec "$@"; fi

datadir=/var/lib/mysql
mkdir -p /run/mysqld "$datadir"
chown mysql:mysql /run/mysqld "$datadir"

sql_quote() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e "s/'/''/g"; }

if [ ! -d "$datadir/mysql" ]; then
	root_pw="${MARIADB_ROOT_PASSWORD:-${MYSQL_ROOT_PASSWORD:-}}"
	allow_empty="${MARIADB_ALLOW_EMPTY_ROOT_PASSWORD:-${MYSQL_ALLOW_EMPTY_PASSWORD:-}}"
	if [ -z "$root_pw" ] && [ -z "$allow_empty" ]; then
		echo "Error: Database is uninitialized and password option is not specified." >&2
		echo "       Set MARIADB_ROOT_PASSWORD or MARIADB_ALLOW_EMPTY_ROOT_PASSWORD=1." >&2
		exit 1
	fi
	mariadb-install-db --user=mysql --datadir="$datadir" --skip-test-db \
		--auth-root-authentication-method=normal >/dev/null
	mariadbd --user=mysql --datadir="$datadir" --skip-networking \
		--socket=/run/mysqld/init.sock --pid-file=/run/mysqld/init.pid &
	pid=$!
	i=0
	until mariadb-admin --socket=/run/mysqld/init.sock -uroot ping >/dev/null 2>&1; do
		i=$((i + 1))
		if [ "$i" -gt 300 ]; then echo "Error: temporary server did not start" >&2; exit 1; fi
		sleep 0.1
	done
	pw="$(sql_quote "$root_pw")"
	{
		echo "SET @@SESSION.SQL_LOG_BIN=0;"
		echo "DELETE FROM mysql.global_priv WHERE user='' OR (user='root' AND host NOT IN ('localhost'));"
		echo "ALTER USER 'root'@'localhost' IDENTIFIED BY '$pw';"
		echo "CREATE USER 'root'@'%' IDENTIFIED BY '$pw';"
		echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
		if [ -n "${MARIADB_DATABASE:-${MYSQL_DATABASE:-}}" ]; then
			echo "CREATE DATABASE IF NOT EXISTS \`${MARIADB_DATABASE:-${MYSQL_DATABASE:-}}\`;"
		fi
		if [ -n "${MARIADB_USER:-}" ]; then
			echo "CREATE USER '$(sql_quote "$MARIADB_USER")'@'%' IDENTIFIED BY '$(sql_quote "${MARIADB_PASSWORD:-}")';"
			if [ -n "${MARIADB_DATABASE:-}" ]; then
				echo "GRANT ALL ON \`$MARIADB_DATABASE\`.* TO '$(sql_quote "$MARIADB_USER")'@'%';"
			fi
		fi
		echo "FLUSH PRIVILEGES;"
	} | mariadb --socket=/run/mysqld/init.sock -uroot
	if [ -n "$root_pw" ]; then
		MYSQL_PWD="$root_pw" mariadb-admin --socket=/run/mysqld/init.sock -uroot shutdown
	else
		mariadb-admin --socket=/run/mysqld/init.sock -uroot shutdown
	fi
	wait "$pid" || true
	echo "MariaDB init process done. Ready for start up."
fi
exec "$@"
