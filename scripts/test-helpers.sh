#!/usr/bin/env bash
# Throwaway helpers for the production-PostgreSQL tests, sourced by scripts/test.sh:
#
#   start_pgbouncer     PgBouncer in pool_mode=transaction in front of the test server
#                       -> INTERVIEW_TEST_PGBOUNCER_URL
#   start_tls_cluster   a second PostgreSQL cluster of its own, hostssl only, with a CA and a
#                       server certificate made here -> INTERVIEW_TEST_TLS_URL,
#                       INTERVIEW_TEST_TLS_CA, INTERVIEW_TEST_TLS_WRONG_CA
#   stop_helpers        stops both and removes their temp dirs (scripts/test.sh traps it)
#
# Each helper gets a free loopback port and a temp dir with its config, pid and log files; the
# shared cluster the tests use is never stopped or reconfigured. pgbouncer is installed from the
# distribution's packages when missing (as root). PgBouncer, initdb and pg_ctl refuse to run as
# root, so as root they run as the `postgres` user.

helpers_dirs=()
helpers_pgbouncer_pid=""
helpers_tls_data=""

# Runs a shell command as the postgres user when we are root, else as ourselves.
as_pg() {
  if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$1"; else sh -c "$1"; fi
}

# Sets `dir` to a new temp dir the helper's user owns (not echoed: the list of dirs to
# remove must grow in this shell, not in a command substitution's subshell).
helper_dir() {
  # /tmp, not $TMPDIR: the postgres user must reach it.
  dir=$(mktemp -d "/tmp/interview-$1.XXXXXX")
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
  helpers_dirs+=("$dir")
}

# A loopback port nothing listens on (checked by connecting; the helper binds it right after).
free_port() {
  local port
  for _ in $(seq 50); do
    port=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  echo "no free loopback port found" >&2
  return 1
}

wait_for_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# Finds a PostgreSQL server binary: on PATH, else the newest /usr/lib/postgresql/*/bin.
pg_bin() {
  command -v "$1" 2>/dev/null && return 0
  local found
  found=$(ls /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -n 1)
  [ -n "$found" ] && echo "$found"
}

helpers_apt_updated=""
install_package() {
  if [ "$(id -u)" != 0 ]; then
    echo "test helpers: $1 is not installed and we are not root: install it (apt-get install $1)" >&2
    return 1
  fi
  if [ -z "$helpers_apt_updated" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    helpers_apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null
}

start_pgbouncer() {
  local bin upstream host port dir listen
  bin=$(command -v pgbouncer || ls /usr/sbin/pgbouncer 2>/dev/null || true)
  if [ -z "$bin" ]; then
    install_package pgbouncer || return 1
    bin=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
  fi
  # Debian's package starts its own instance on 6432; ours has its own port and config.
  upstream="${INTERVIEW_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
  host="${upstream#*://}"; host="${host#*@}"; host="${host%%/*}"; host="${host%%\?*}"
  port="${host##*:}"; host="${host%%:*}"; [ "$port" = "$host" ] && port=5432
  helper_dir pgbouncer
  listen=$(free_port) || return 1
  cat >"$dir/pgbouncer.ini" <<INI
[databases]
* = host=$host port=$port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $listen
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
max_client_conn = 500
default_pool_size = 20
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
  echo '"postgres" ""' >"$dir/userlist.txt"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"/*; fi
  as_pg "'$bin' -d '$dir/pgbouncer.ini'" || {
    cat "$dir/pgbouncer.log" >&2 2>/dev/null
    return 1
  }
  wait_for_port "$listen" || { echo "pgbouncer did not start; its log:" >&2; cat "$dir/pgbouncer.log" >&2; return 1; }
  helpers_pgbouncer_pid=$(cat "$dir/pgbouncer.pid")
  export INTERVIEW_TEST_PGBOUNCER_URL="postgres://postgres@127.0.0.1:$listen/postgres"
  echo "test helpers: $("$bin" --version | head -n 1) (pool_mode=transaction) on 127.0.0.1:$listen in front of $host:$port" >&2
}

# A CA, a server certificate for localhost / 127.0.0.1 signed by it, and a second, unrelated CA.
make_certificates() {
  local dir=$1 ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -keyout "$dir/ca.key" -out "$dir/ca.crt" -days 2 \
    -subj "/CN=interview-store test CA" 2>/dev/null
  openssl req -x509 "${ec[@]}" -keyout "$dir/wrong-ca.key" -out "$dir/wrong-ca.crt" -days 2 \
    -subj "/CN=some other CA" 2>/dev/null
  openssl req "${ec[@]}" -keyout "$dir/server.key" -out "$dir/server.csr" -subj "/CN=localhost" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$dir/san.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -out "$dir/server.crt" -days 2 -extfile "$dir/san.ext" 2>/dev/null
  chmod 0600 "$dir/server.key" "$dir/ca.key" "$dir/wrong-ca.key"
  chmod 0644 "$dir/ca.crt" "$dir/wrong-ca.crt"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"/*; fi
}

start_tls_cluster() {
  local initdb pg_ctl dir port
  initdb=$(pg_bin initdb) && pg_ctl=$(pg_bin pg_ctl) || {
    echo "test helpers: initdb/pg_ctl not found (PostgreSQL server binaries)" >&2
    return 1
  }
  command -v openssl >/dev/null || install_package openssl || return 1
  helper_dir tls
  port=$(free_port) || return 1
  make_certificates "$dir" || return 1
  as_pg "'$initdb' -D '$dir/data' -U postgres -A trust -E UTF8 --no-sync >'$dir/initdb.log' 2>&1" || {
    cat "$dir/initdb.log" >&2
    return 1
  }
  # TLS only over TCP: a plain connection is refused, so a test that connects is on TLS.
  printf 'local all all trust\nhostssl all all 127.0.0.1/32 trust\n' >"$dir/data/pg_hba.conf"
  as_pg "'$pg_ctl' -D '$dir/data' -l '$dir/postgres.log' -w -t 30 start -o \"-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories='$dir' -c ssl=on -c ssl_cert_file='$dir/server.crt' -c ssl_key_file='$dir/server.key' -c fsync=off -c shared_buffers=16MB -c max_connections=50\" >/dev/null" || {
    echo "test helpers: the TLS cluster did not start; its log:" >&2
    cat "$dir/postgres.log" >&2
    return 1
  }
  helpers_tls_data="$dir/data"
  export INTERVIEW_TEST_TLS_URL="postgres://postgres@127.0.0.1:$port/postgres"
  export INTERVIEW_TEST_TLS_CA="$dir/ca.crt"
  export INTERVIEW_TEST_TLS_WRONG_CA="$dir/wrong-ca.crt"
  echo "test helpers: TLS-only PostgreSQL cluster on 127.0.0.1:$port (CA $dir/ca.crt)" >&2
}

stop_helpers() {
  if [ -n "$helpers_pgbouncer_pid" ]; then
    kill "$helpers_pgbouncer_pid" 2>/dev/null || true
    helpers_pgbouncer_pid=""
  fi
  if [ -n "$helpers_tls_data" ]; then
    as_pg "'$(pg_bin pg_ctl)' -D '$helpers_tls_data' -m immediate stop >/dev/null 2>&1" || true
    helpers_tls_data=""
  fi
  for dir in "${helpers_dirs[@]}"; do rm -rf "$dir"; done
  helpers_dirs=()
}
