#!/bin/sh
# Entrypoint for the locally built test image backupagent-test/redis.
# Like the official `redis` image: data in /data (the working directory),
# port 6379, the server runs as the redis user, and arguments that start
# with '-' are passed to redis-server.
set -eu
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then set -- redis-server "$@"; fi
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
	mkdir -p /data
	chown redis:redis /data
	cd /data
	exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
