#!/usr/bin/env bash
# Builds local STAND-INS for the official `postgres:15` and `redis:7` images, plus an app base
# image with their clients, because no image registry is reachable on these machines (nothing
# can be pulled). The images are assembled `FROM scratch` out of the host's Debian packages:
#
#   enclii-test/postgres:15          PostgreSQL 15 with the official image's interface (POSTGRES_*
#                                    env, PGDATA=/var/lib/postgresql/data, /docker-entrypoint-initdb.d,
#                                    5432 with scram-sha-256 for remote hosts); psql, pg_dump,
#                                    pg_restore, pg_isready inside
#   enclii-test/redis:7              redis-server 7 with the official image's interface (CMD
#                                    redis-server, args passed through, /data owned by `redis`,
#                                    6379 on all interfaces, protected mode off); redis-cli inside
#   enclii-test/addon-client:latest  busybox (sh, httpd, nc, ...) plus psql and redis-cli
#
# Each image root gets the binaries, every shared library `ldd` reports for them (and the dynamic
# loader), the data files they read, /etc/passwd and /etc/group, and the static busybox
# (/bin/busybox, its applets as symlinks in /bin). Differences from the official images: databases
# are initialised with --locale=C --encoding=UTF8 (the only locales are C, POSIX and C.UTF-8; the
# official image uses en_US.utf8), the time zone is Etc/UTC, users are uid/gid 999, and
# `docker run --user` with a uid missing from /etc/passwd is not supported (no nss_wrapper).
#
# Usage: .ci/addon-images.sh [--force] [postgres|redis|client]...
#   Builds the named images (default: all three); an image that already exists is kept unless
#   --force is given. Needs root (file ownership in the images) and the Docker engine.
set -euo pipefail

DOCKER=/usr/bin/docker
PG=/usr/lib/postgresql/15
PG_IMAGE=enclii-test/postgres:15
REDIS_IMAGE=enclii-test/redis:7
CLIENT_IMAGE=enclii-test/addon-client:latest
SYS_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

force=0
want=()
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    postgres | redis | client) want+=("$arg") ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [--force] [postgres|redis|client]..." >&2; exit 2 ;;
  esac
done
[ ${#want[@]} -gt 0 ] || want=(postgres redis client)

image_of() {
  case "$1" in postgres) echo "$PG_IMAGE" ;; redis) echo "$REDIS_IMAGE" ;; client) echo "$CLIENT_IMAGE" ;; esac
}
todo=()
for name in "${want[@]}"; do
  if [ "$force" = 0 ] && "$DOCKER" image inspect "$(image_of "$name")" >/dev/null 2>&1; then
    echo "$(image_of "$name") exists (--force rebuilds it)"
  else
    todo+=("$name")
  fi
done
[ ${#todo[@]} -gt 0 ] || exit 0

# The host packages the images are made of (Debian 12).
need_apt=()
[ -x $PG/bin/postgres ] || need_apt+=(postgresql-15)
[ -x /usr/bin/redis-server ] || need_apt+=(redis-server)
[ -x /usr/bin/redis-cli ] || need_apt+=(redis-tools)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
[ -x /usr/bin/setpriv ] || need_apt+=(util-linux)
[ -f /usr/share/zoneinfo/Etc/UTC ] || need_apt+=(tzdata)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

work="$(mktemp -d /var/tmp/enclii-addon-images.XXXXXX)"
trap 'rm -rf "$work"' EXIT

# --- helpers assembling an image root -----------------------------------------------------------

# add_file ROOT PATH [DEST]: copies PATH (following symlinks) to ROOT/DEST (default: same path).
add_file() {
  local dest="$1${3:-$2}"
  [ -e "$dest" ] && return 0
  mkdir -p "$(dirname "$dest")"
  cp -L --preserve=mode "$2" "$dest"
}

# add_libs ROOT FILE...: the shared libraries (and the loader) the ELF files need, at the paths
# the host's loader resolves them to (the image has no ld.so.cache: the loader's default
# directories /lib/x86_64-linux-gnu and /usr/lib/x86_64-linux-gnu are searched).
add_libs() {
  local root="$1" lib
  shift
  if ldd "$@" 2>/dev/null | grep 'not found'; then echo "missing libraries (above) on the host" >&2; exit 1; fi
  for lib in $(ldd "$@" 2>/dev/null | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\// && $i !~ /:$/) print $i }' | sort -u); do
    add_file "$root" "$lib"
  done
}

# add_bins ROOT PATH...: executables at their host paths, with their libraries.
add_bins() {
  local root="$1" bin
  shift
  for bin in "$@"; do add_file "$root" "$bin"; done
  add_libs "$root" "$@"
}

# add_base ROOT PASSWD_LINES GROUP_LINES: busybox and its applets in /bin, /etc files, /tmp.
add_base() {
  local root="$1" applet
  mkdir -p "$root"/{bin,etc,tmp,root}
  chmod 1777 "$root/tmp"
  chmod 0700 "$root/root"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\n%bnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' "$2" >"$root/etc/passwd"
  printf 'root:x:0:\n%bnogroup:x:65534:\n' "$3" >"$root/etc/group"
  # glibc's lookups (files and dns are built into Debian 12's libc); Docker supplies /etc/hosts
  # and /etc/resolv.conf.
  printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nservices: files\nprotocols: files\n' \
    >"$root/etc/nsswitch.conf"
}

add_zoneinfo() {
  mkdir -p "$1/usr/share/zoneinfo"
  tar -C /usr/share/zoneinfo --exclude=./right -cf - . | tar -C "$1/usr/share/zoneinfo" -xf -
  ln -sfn /usr/share/zoneinfo/Etc/UTC "$1/etc/localtime"
  echo Etc/UTC >"$1/etc/timezone"
}

# build_image TAG ROOT DOCKERFILE_LINES: a FROM scratch image of ROOT (ADD of a tar keeps the
# files' owners and modes).
build_image() {
  local ctx="$work/ctx-${1//[\/:]/-}" old
  mkdir -p "$ctx"
  tar --numeric-owner -C "$2" -cf "$ctx/rootfs.tar" .
  printf 'FROM scratch\nADD rootfs.tar /\n%s\n' "$3" >"$ctx/Dockerfile"
  old="$("$DOCKER" image inspect -f '{{.Id}}' "$1" 2>/dev/null || true)"
  DOCKER_BUILDKIT=1 "$DOCKER" build -q -t "$1" "$ctx" >/dev/null
  # A rebuild (--force) leaves the previous image untagged: drop it unless a container uses it.
  if [ -n "$old" ] && [ "$old" != "$("$DOCKER" image inspect -f '{{.Id}}' "$1")" ]; then
    "$DOCKER" image rm "$old" >/dev/null 2>&1 || true
  fi
  echo "built $1 ($("$DOCKER" image inspect -f '{{.Size}}' "$1" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
}

# --- enclii-test/postgres:15 --------------------------------------------------------------------

postgres_entrypoint() {
  cat <<'SH'
#!/bin/sh
# Stand-in for the official postgres image's docker-entrypoint.sh (busybox sh): initialises an
# empty $PGDATA from the POSTGRES_* variables, with a temporary server that accepts no TCP
# connections, then execs the real server as `postgres` (PID 1, so it gets the stop signal).
set -eo pipefail

# file_env VAR [DEFAULT]: VAR from $VAR or from the file named by $VAR_FILE.
file_env() {
	eval "_val=\${$1:-} _file=\${$1_FILE:-}"
	if [ -n "$_val" ] && [ -n "$_file" ]; then
		echo >&2 "error: both $1 and $1_FILE are set (but are exclusive)"
		exit 1
	fi
	if [ -n "$_file" ]; then _val="$(cat "$_file")"; elif [ -z "$_val" ]; then _val="${2:-}"; fi
	export "$1=$_val"
	unset "$1_FILE"
}

want_help() {
	for arg; do
		case "$arg" in '-?' | --help | --describe-config | -V | --version) return 0 ;; esac
	done
	return 1
}

setup_env() {
	file_env POSTGRES_PASSWORD
	file_env POSTGRES_USER postgres
	file_env POSTGRES_DB "$POSTGRES_USER"
	file_env POSTGRES_INITDB_ARGS
	: "${POSTGRES_HOST_AUTH_METHOD:=}"
	DATABASE_ALREADY_EXISTS=
	if [ -s "$PGDATA/PG_VERSION" ]; then DATABASE_ALREADY_EXISTS=true; fi
}

create_db_directories() {
	mkdir -p "$PGDATA"
	chmod 00700 "$PGDATA" || :
	mkdir -p /var/run/postgresql || :
	chmod 03775 /var/run/postgresql || :
	if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
		mkdir -p "$POSTGRES_INITDB_WALDIR"
		if [ "$(id -u)" = 0 ]; then
			find "$POSTGRES_INITDB_WALDIR" \! -user postgres -exec chown postgres '{}' +
		fi
		chmod 700 "$POSTGRES_INITDB_WALDIR"
	fi
	if [ "$(id -u)" = 0 ]; then
		find "$PGDATA" \! -user postgres -exec chown postgres '{}' +
		find /var/run/postgresql \! -user postgres -exec chown postgres '{}' +
	fi
}

verify_minimum_env() {
	if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
		cat >&2 <<-'EOE'
			Error: Database is uninitialized and superuser password is not specified.
			       You must specify POSTGRES_PASSWORD to a non-empty value for the
			       superuser. For example, "-e POSTGRES_PASSWORD=password" on "docker run".

			       You may also use "POSTGRES_HOST_AUTH_METHOD=trust" to allow all
			       connections without a password. This is *not* recommended.
		EOE
		exit 1
	fi
	if [ "$POSTGRES_HOST_AUTH_METHOD" = trust ]; then
		echo >&2 'WARNING: POSTGRES_HOST_AUTH_METHOD has been set to "trust": every host may connect without a password.'
	fi
}

init_database_dir() {
	if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then set -- --waldir "$POSTGRES_INITDB_WALDIR" "$@"; fi
	# No en_US.utf8 in this image: C collation, UTF8 encoding (POSTGRES_INITDB_ARGS, word-split on
	# purpose as in the official image, comes later and may override them).
	if [ -n "$POSTGRES_PASSWORD" ]; then
		printf '%s\n' "$POSTGRES_PASSWORD" |
			eval 'initdb --username="$POSTGRES_USER" --pwfile=/dev/stdin --locale=C --encoding=UTF8 '"$POSTGRES_INITDB_ARGS"' "$@"'
	else
		eval 'initdb --username="$POSTGRES_USER" --locale=C --encoding=UTF8 '"$POSTGRES_INITDB_ARGS"' "$@"'
	fi
}

# Remote hosts authenticate with the configured password_encryption (scram-sha-256) unless
# POSTGRES_HOST_AUTH_METHOD says otherwise; the socket and localhost stay trusted (initdb's default).
setup_hba_conf() {
	if [ "$1" = postgres ]; then shift; fi
	: "${POSTGRES_HOST_AUTH_METHOD:=$(postgres -C password_encryption "$@")}"
	{
		printf '\n'
		if [ "$POSTGRES_HOST_AUTH_METHOD" = trust ]; then
			printf '# warning trust is enabled for all connections\n'
		fi
		printf 'host all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD"
	} >>"$PGDATA/pg_hba.conf"
}

shell_quote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

# The temporary server listens on the Unix socket only: a TCP connection means the final server.
temp_server_start() {
	if [ "$1" = postgres ]; then shift; fi
	_opts=
	for arg; do _opts="$_opts $(shell_quote "$arg")"; done
	_opts="$_opts -c listen_addresses='' -p ${PGPORT:-5432}"
	PGUSER="${PGUSER:-$POSTGRES_USER}" pg_ctl -D "$PGDATA" -o "$_opts" -w start
}

temp_server_stop() {
	PGUSER="${PGUSER:-postgres}" pg_ctl -D "$PGDATA" -m fast -w stop
}

process_sql() {
	PGHOST= PGHOSTADDR= psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc "$@"
}

setup_db() {
	if [ "$POSTGRES_DB" = postgres ]; then return; fi
	_exists="$(process_sql --dbname postgres --set db="$POSTGRES_DB" --tuples-only <<-'EOSQL'
		SELECT 1 FROM pg_database WHERE datname = :'db' ;
	EOSQL
	)"
	if [ -z "$_exists" ]; then
		process_sql --dbname postgres --set db="$POSTGRES_DB" <<-'EOSQL'
			CREATE DATABASE :"db" ;
		EOSQL
		echo
	fi
}

# /docker-entrypoint-initdb.d: *.sh (run if executable, else sourced), *.sql, *.sql.gz, *.sql.xz.
process_init_files() {
	echo
	for f; do
		[ -e "$f" ] || continue
		case "$f" in
			*.sh)
				if [ -x "$f" ]; then echo "$0: running $f"; "$f"; else echo "$0: sourcing $f"; . "$f"; fi ;;
			*.sql) echo "$0: running $f"; process_sql --dbname "$POSTGRES_DB" -f "$f"; echo ;;
			*.sql.gz) echo "$0: running $f"; gunzip -c "$f" | process_sql --dbname "$POSTGRES_DB"; echo ;;
			*.sql.xz) echo "$0: running $f"; xzcat "$f" | process_sql --dbname "$POSTGRES_DB"; echo ;;
			*) echo "$0: ignoring $f" ;;
		esac
		echo
	done
}

if [ "${1#-}" != "$1" ]; then set -- postgres "$@"; fi

if [ "$1" = postgres ] && ! want_help "$@"; then
	setup_env
	create_db_directories
	if [ "$(id -u)" = 0 ]; then
		# Again as `postgres` (the server refuses to run as root).
		exec env HOME=/var/lib/postgresql /usr/bin/setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
	fi
	if [ -z "$DATABASE_ALREADY_EXISTS" ]; then
		verify_minimum_env
		ls /docker-entrypoint-initdb.d/ >/dev/null
		init_database_dir
		setup_hba_conf "$@"
		export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"
		temp_server_start "$@"
		setup_db
		process_init_files /docker-entrypoint-initdb.d/*
		temp_server_stop
		unset PGPASSWORD
		echo
		echo 'PostgreSQL init process complete; ready for start up.'
		echo
	else
		echo
		echo 'PostgreSQL Database directory appears to contain a database; Skipping initialization'
		echo
	fi
fi

exec "$@"
SH
}

build_postgres() {
  local root="$work/postgres" f
  add_base "$root" 'postgres:x:999:999:PostgreSQL administrator:/var/lib/postgresql:/bin/sh\n' 'postgres:x:999:\n'
  # The server and the tools the entrypoint, health checks and backups use, at Debian's paths (the
  # binaries find /usr/share/postgresql/15 and their modules relative to /usr/lib/postgresql/15/bin).
  add_bins "$root" $PG/bin/{postgres,initdb,pg_ctl,psql,pg_dump,pg_dumpall,pg_restore,pg_isready} \
    $PG/bin/{createdb,dropdb,createuser,dropuser,pg_controldata,pg_resetwal,vacuumdb} /usr/bin/setpriv
  mkdir -p "$root/usr/bin"
  for f in psql pg_dump pg_dumpall pg_restore pg_isready createdb dropdb createuser dropuser vacuumdb; do
    ln -s ../lib/postgresql/15/bin/$f "$root/usr/bin/$f"
  done
  # Loadable modules (plpgsql, snowball dictionaries, encodings, contrib), not the LLVM JIT (the
  # server runs without JIT when llvmjit.so is absent).
  for f in $PG/lib/*.so; do
    [ "${f##*/}" = llvmjit.so ] || add_file "$root" "$f"
  done
  add_libs "$root" "$root"$PG/lib/*.so
  mkdir -p "$root/usr/share/postgresql"
  tar -C /usr/share/postgresql --exclude=./15/man -cf - ./15 | tar -C "$root/usr/share/postgresql" -xf -
  # As the official image: new clusters listen on every address.
  sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" "$root/usr/share/postgresql/15/postgresql.conf.sample"
  grep -q "^listen_addresses = '\*'" "$root/usr/share/postgresql/15/postgresql.conf.sample"
  # initdb imports the collations `locale -a` lists; only C, POSIX and C.UTF-8 exist here.
  add_bins "$root" /usr/bin/locale
  mkdir -p "$root/usr/lib/locale"
  cp -a /usr/lib/locale/C.utf8 "$root/usr/lib/locale/"
  add_zoneinfo "$root"
  mkdir -p "$root/var/lib/postgresql/data" "$root/var/run/postgresql" "$root/docker-entrypoint-initdb.d" "$root/usr/local/bin"
  chown -R 999:999 "$root/var/lib/postgresql" "$root/var/run/postgresql"
  chmod 1777 "$root/var/lib/postgresql/data"
  chmod 3777 "$root/var/run/postgresql"
  postgres_entrypoint >"$root/usr/local/bin/docker-entrypoint.sh"
  chmod 755 "$root/usr/local/bin/docker-entrypoint.sh"
  build_image "$PG_IMAGE" "$root" "ENV PATH=$SYS_PATH:$PG/bin PG_MAJOR=15 PGDATA=/var/lib/postgresql/data
VOLUME /var/lib/postgresql/data
ENTRYPOINT [\"docker-entrypoint.sh\"]
STOPSIGNAL SIGINT
EXPOSE 5432
CMD [\"postgres\"]"
}

# --- enclii-test/redis:7 ------------------------------------------------------------------------

redis_entrypoint() {
  cat <<'SH'
#!/bin/sh
# Stand-in for the official redis image's docker-entrypoint.sh (busybox sh).
set -e

# first arg is `-f` or `--some-option`, or `something.conf`
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
	set -- redis-server "$@"
fi

# allow the container to be started with `--user`
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
	find . \! -user redis -exec chown redis '{}' +
	exec env HOME=/data /usr/bin/setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

# The official image's redis-server is built with protected mode off (and binds `* -::*`, the
# built-in default): other containers can connect without a configuration file. Debian's binary
# defaults to protected mode on, so pass `--protected-mode no` first unless the arguments or the
# configuration file set it (later options win).
if [ "$1" = redis-server ]; then
	shift
	case "${1:-}" in
		-v | --version | -h | --help | --test-memory | --check-system) set -- redis-server "$@" ;;
		*)
			_set=
			for arg; do [ "$arg" = --protected-mode ] && _set=1; done
			_conf=
			case "${1:-}" in '' | --*) ;; *) _conf="$1"; shift ;; esac
			if [ -n "$_conf" ] && [ -f "$_conf" ] && grep -qiE '^[[:space:]]*protected-mode[[:space:]]' "$_conf"; then _set=1; fi
			[ -n "$_set" ] || set -- --protected-mode no "$@"
			if [ -n "$_conf" ]; then set -- "$_conf" "$@"; fi
			set -- redis-server "$@"
			;;
	esac
fi

# set an appropriate umask (if one isn't set already)
um="$(umask)"
if [ "$um" = '0022' ]; then
	umask 0077
fi

exec "$@"
SH
}

build_redis() {
  local root="$work/redis" f
  add_base "$root" 'redis:x:999:999::/data:/usr/sbin/nologin\n' 'redis:x:999:\n'
  # Debian's redis-server, redis-check-rdb and redis-check-aof are one binary (it looks at argv[0]).
  add_file "$root" /usr/bin/redis-server /usr/local/bin/redis-server
  add_file "$root" /usr/bin/redis-cli /usr/local/bin/redis-cli
  for f in redis-check-rdb redis-check-aof redis-sentinel; do ln -s redis-server "$root/usr/local/bin/$f"; done
  add_bins "$root" /usr/bin/setpriv
  add_libs "$root" /usr/bin/redis-server /usr/bin/redis-cli
  add_zoneinfo "$root"
  mkdir -p "$root/data"
  chown 999:999 "$root/data"
  redis_entrypoint >"$root/usr/local/bin/docker-entrypoint.sh"
  chmod 755 "$root/usr/local/bin/docker-entrypoint.sh"
  build_image "$REDIS_IMAGE" "$root" "ENV PATH=$SYS_PATH
VOLUME /data
WORKDIR /data
ENTRYPOINT [\"docker-entrypoint.sh\"]
EXPOSE 6379
CMD [\"redis-server\"]"
}

# --- enclii-test/addon-client:latest ------------------------------------------------------------

build_client() {
  local root="$work/client"
  add_base "$root" 'www-data:x:33:33:www-data:/var/www:/bin/sh\n' 'www-data:x:33:\n'
  add_bins "$root" $PG/bin/psql $PG/bin/pg_isready
  mkdir -p "$root/usr/bin"
  ln -s ../lib/postgresql/15/bin/psql "$root/usr/bin/psql"
  ln -s ../lib/postgresql/15/bin/pg_isready "$root/usr/bin/pg_isready"
  add_bins "$root" /usr/bin/redis-cli
  build_image "$CLIENT_IMAGE" "$root" "ENV PATH=$SYS_PATH
CMD [\"sh\"]"
}

for name in "${todo[@]}"; do "build_$name"; done
