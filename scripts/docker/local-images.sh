#!/usr/bin/env bash
# Makes, with no container registry, the images the project's Dockerfiles are built FROM,
# on a Debian bookworm machine with a Docker engine and a Debian mirror (plain HTTP):
#
#   sitewatch-local/runtime:bookworm  Debian bookworm (debootstrap minbase) with
#                                     ca-certificates, libssl3, zlib1g
#   sitewatch-local/builder:bookworm  the same with build-essential, pkg-config, libssl-dev,
#                                     zlib1g-dev, git, python3, cmake; this machine's Rust
#                                     toolchain in /usr/local/rust (cargo, rustc, rustdoc),
#                                     CARGO_HOME=/usr/local/cargo, and this machine's CA
#                                     certificates (HTTPS to the crates registry fails
#                                     without them where TLS is intercepted)
#   sitewatch-local/postgres:15       Debian's postgresql-15 on the runtime image, with an
#                                     entrypoint like the official postgres image's
#                                     (scripts/docker/postgres.Dockerfile)
#
# Usage:
#   scripts/docker/local-images.sh [--rebuild] [--verify] [runtime|builder|postgres ...]
#
#   With no image named, makes all three. An image that exists is kept unless --rebuild
#   is given (the postgres image is also made again when its Dockerfile, its entrypoint or
#   the runtime image changed). Making postgres makes runtime first when it is missing.
#   --verify  then checks the named images: postgres answers `select 1` to psql from this
#             machine with a password, stops with exit code 0 and keeps its data for the
#             next start; the builder runs `cargo install cargo-chef --locked` (minutes).
#
# Environment:
#   MIRROR        Debian mirror (default: the first non-security URIs of
#                 /etc/apt/sources.list.d/*.sources, else /etc/apt/sources.list, else
#                 http://deb.debian.org/debian)
#   LOCAL_IMAGES_WORK  scratch directory (default /tmp/sitewatch-local-images); the root
#                 filesystems made there are deleted after import, the .deb cache is kept
#
# Needs root (or sudo) for debootstrap, and installs debootstrap with apt-get when missing.
# Builds run with --network host: Debian's mirror and the crates registry are reached the
# way this machine reaches them.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$here/../.." && pwd)

RUNTIME_IMAGE=sitewatch-local/runtime:bookworm
BUILDER_IMAGE=sitewatch-local/builder:bookworm
POSTGRES_IMAGE=sitewatch-local/postgres:15
SUITE=bookworm
RUNTIME_PACKAGES=ca-certificates,libssl3,zlib1g
BUILDER_PACKAGES=$RUNTIME_PACKAGES,build-essential,pkg-config,libssl-dev,zlib1g-dev,git,python3,cmake
BASE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

work=${LOCAL_IMAGES_WORK:-/tmp/sitewatch-local-images}

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
log() { printf '[local-images] %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

rebuild=false
verify=false
wanted=()
for arg in "$@"; do
  case $arg in
    --rebuild) rebuild=true ;;
    --verify) verify=true ;;
    -h | --help)
      usage
      exit 0
      ;;
    runtime | builder | postgres) wanted+=("$arg") ;;
    *)
      usage >&2
      die "unknown argument: $arg"
      ;;
  esac
done
((${#wanted[@]})) || wanted=(runtime builder postgres)
want() {
  local w
  for w in "${wanted[@]}"; do [[ $w == "$1" ]] && return 0; done
  return 1
}

sudo_cmd=()
[[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)

# --- timing -------------------------------------------------------------------------
timings=()
now() { date +%s.%N; }
# timed LABEL COMMAND...: runs COMMAND and records how long it took. Not to be called
# in a condition: a failing COMMAND must end the script (set -e), with the timings so far.
timed() {
  local label=$1 start secs
  shift
  start=$(now)
  "$@"
  secs=$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
  timings+=("$(printf '%-46s %7s s' "$label" "$secs")")
  log "$label: $secs s"
}
print_timings() {
  ((${#timings[@]})) || return 0
  log "timings:"
  printf '  %s\n' "${timings[@]}" >&2
}

image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
# drop_replaced OLD_ID IMAGE: removes the image IMAGE pointed to before it was made again
# (left untagged), unless a container still uses it.
drop_replaced() {
  [[ -n $1 && $1 != "$(image_id "$2")" ]] || return 0
  docker image rm "$1" >/dev/null 2>&1 ||
    log "the replaced $2 (${1:7:12}) stays while an image or container uses it"
}
image_exists() { docker image inspect "$1" >/dev/null 2>&1; }
image_label() { docker image inspect -f "{{index .Config.Labels \"$2\"}}" "$1" 2>/dev/null || true; }

# --- prerequisites ------------------------------------------------------------------
check_docker() {
  docker version >/dev/null 2>&1 && return 0
  die "cannot reach the Docker daemon (start it, e.g. \`nohup dockerd >/tmp/dockerd.log 2>&1 &\`)"
}

ensure_debootstrap() {
  command -v debootstrap >/dev/null && return 0
  log "installing debootstrap"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}

# Prints the URIs of the first deb822 paragraph whose suites are (or are not, with
# "not") security suites, from this machine's apt sources.
sources_uri() {
  local want_security=$1 f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r $f ]] || continue
    awk -v sec="$want_security" '
      BEGIN { RS = ""; FS = "\n" }
      {
        uri = ""; suites = ""; enabled = 1
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) { uri = $i; sub(/^URIs:[ \t]*/, "", uri); split(uri, u, /[ \t]+/); uri = u[1] }
          if ($i ~ /^Suites:/) suites = $i
          if ($i ~ /^Enabled:[ \t]*no/) enabled = 0
        }
        is_sec = (suites ~ /-security/)
        if (uri != "" && enabled && ((sec == "security") == is_sec)) { print uri; exit }
      }' "$f"
  done | head -n1
}

debian_mirror() {
  local uri
  if [[ -n ${MIRROR:-} ]]; then
    echo "$MIRROR"
    return
  fi
  uri=$(sources_uri not)
  if [[ -z $uri && -r /etc/apt/sources.list ]]; then
    uri=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

security_mirror() {
  local uri
  uri=$(sources_uri security)
  echo "${uri:-http://deb.debian.org/debian-security}"
}

# --- root filesystems ---------------------------------------------------------------
rootfs_dirs=()
cleanup_rootfs() {
  local dir=$1 m
  [[ -d $dir ]] || return 0
  # Anything debootstrap left mounted inside (proc, sys) after a failure.
  while read -r m; do
    "${sudo_cmd[@]}" umount -l "$m" 2>/dev/null || true
  done < <(awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r)
  "${sudo_cmd[@]}" rm -rf --one-file-system "$dir"
}
cleanup_all() {
  local d
  for d in "${rootfs_dirs[@]}"; do cleanup_rootfs "$d"; done
}
trap 'cleanup_all; print_timings' EXIT

# make_rootfs NAME PACKAGES: a fresh debootstrap minbase of $SUITE in $work/NAME-rootfs.
make_rootfs() {
  local name=$1 packages=$2 dir=$work/$1-rootfs logf=$work/$1-debootstrap.log
  cleanup_rootfs "$dir"
  rootfs_dirs+=("$dir")
  mkdir -p "$work/debs"
  log "$name: debootstrap --variant=minbase --include=$packages $SUITE from $(debian_mirror) (log: $logf)"
  if ! "${sudo_cmd[@]}" debootstrap --variant=minbase --include="$packages" \
    --cache-dir="$work/debs" "$SUITE" "$dir" "$(debian_mirror)" >"$logf" 2>&1; then
    tail -n 30 "$logf" >&2
    die "$name: debootstrap failed (log: $logf)"
  fi
}

# tidy_rootfs DIR: what the official Debian images also do: apt sources for the
# release, its updates and security; no package lists or caches; nothing of this host.
tidy_rootfs() {
  local dir=$1
  # shellcheck disable=SC2016 # expanded by the inner bash
  "${sudo_cmd[@]}" bash -eu -c '
    dir=$1 mirror=$2 security=$3 suite=$4
    rm -f "$dir/etc/apt/sources.list"
    cat >"$dir/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    cat >"$dir/etc/apt/apt.conf.d/docker-clean" <<EOF
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb
    rm -rf "$dir"/tmp/* "$dir"/var/tmp/* "$dir"/var/log/bootstrap.log "$dir"/var/log/apt/* "$dir"/var/log/dpkg.log
    : >"$dir/etc/resolv.conf"
    echo localhost >"$dir/etc/hostname"
  ' _ "$dir" "$(debian_mirror)" "$(security_mirror)" "$SUITE"
}

# import_rootfs DIR IMAGE CHANGE...: the root filesystem as a one-layer image.
import_rootfs() {
  local dir=$1 image=$2 change
  shift 2
  local args=()
  for change in "$@"; do args+=(-c "$change"); done
  "${sudo_cmd[@]}" tar --numeric-owner --xattrs -C "$dir" -c . |
    docker import "${args[@]}" -m "made by scripts/docker/local-images.sh" - "$image" >/dev/null
}

# --- the images ---------------------------------------------------------------------
make_runtime() {
  local dir=$work/runtime-rootfs
  timed "runtime: debootstrap" make_rootfs runtime "$RUNTIME_PACKAGES"
  tidy_rootfs "$dir"
  timed "runtime: docker import" import_rootfs "$dir" "$RUNTIME_IMAGE" \
    "ENV PATH=$BASE_PATH" 'ENV LANG=C.UTF-8' 'CMD ["bash"]' \
    "LABEL sitewatch.local.packages=$RUNTIME_PACKAGES"
  timed "runtime: clean root filesystem" cleanup_rootfs "$dir"
}

# The active toolchain for this repository (a rust-toolchain file would choose it).
toolchain_sysroot() { (cd "$repo_root" && rustc --print sysroot); }
toolchain_version() { (cd "$repo_root" && rustc -V); }

copy_toolchain() {
  local dir=$1 sysroot
  sysroot=$(toolchain_sysroot)
  [[ -x $sysroot/bin/cargo && -x $sysroot/bin/rustc ]] || die "no cargo and rustc in $sysroot/bin"
  log "builder: copying $(toolchain_version) from $sysroot (bin without rustfmt/clippy, lib)"
  "${sudo_cmd[@]}" mkdir -p "$dir/usr/local/rust/bin" "$dir/usr/local/cargo"
  local f
  for f in "$sysroot"/bin/*; do
    case ${f##*/} in
      rustfmt | cargo-fmt | clippy-driver | cargo-clippy) ;;
      *) "${sudo_cmd[@]}" cp -a "$f" "$dir/usr/local/rust/bin/" ;;
    esac
  done
  "${sudo_cmd[@]}" cp -a "$sysroot/lib" "$dir/usr/local/rust/"
  "${sudo_cmd[@]}" chmod a+w "$dir/usr/local/cargo"
}

# This machine's CA certificates: its local ones where update-ca-certificates keeps
# them, and its bundle over the image's, so HTTPS inside containers trusts what it trusts.
copy_ca_certificates() {
  local dir=$1
  if compgen -G '/usr/local/share/ca-certificates/*' >/dev/null; then
    "${sudo_cmd[@]}" cp -a /usr/local/share/ca-certificates/. "$dir/usr/local/share/ca-certificates/"
    local out
    out=$("${sudo_cmd[@]}" chroot "$dir" update-ca-certificates 2>&1) || {
      echo "$out" >&2
      die "builder: update-ca-certificates failed in the image"
    }
  fi
  "${sudo_cmd[@]}" cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/ca-certificates.crt"
  log "builder: CA bundle from this machine ($(grep -c 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-certificates.crt) certificates)"
}

# Cargo's configuration, when this machine's changes where crates come from or how
# they are fetched (a replaced or mirrored registry, other registries, http/net).
copy_cargo_config() {
  local dir=$1 home=${CARGO_HOME:-$HOME/.cargo} f
  for f in "$home/config.toml" "$home/config"; do
    [[ -f $f ]] || continue
    if grep -Eq '^[[:space:]]*\[(source|registries|registry|http|net)[].]' "$f"; then
      log "builder: copying $f to /usr/local/cargo/config.toml (it sets registry, source, http or net)"
      "${sudo_cmd[@]}" cp "$f" "$dir/usr/local/cargo/config.toml"
      grep -Eq '(cainfo|/home/|/root/)' "$f" && log "builder: warning: $f names paths of this machine; check them in the image"
    else
      log "builder: $f changes no registry, source, http or net setting; not copied"
    fi
    return 0
  done
  log "builder: no cargo configuration in $home; the image uses crates.io as is"
  local v
  v=$(env | grep -E '^CARGO_(REGISTRIES|REGISTRY|SOURCE|HTTP|NET)_' | cut -d= -f1 | tr '\n' ' ' || true)
  [[ -z $v ]] || log "builder: warning: $v set here are not carried into the image"
}

builder_extras() {
  copy_toolchain "$1"
  copy_ca_certificates "$1"
  copy_cargo_config "$1"
}

make_builder() {
  local dir=$work/builder-rootfs version
  version=$(toolchain_version)
  timed "builder: debootstrap" make_rootfs builder "$BUILDER_PACKAGES"
  tidy_rootfs "$dir"
  timed "builder: copy toolchain, CAs, cargo config" builder_extras "$dir"
  timed "builder: docker import" import_rootfs "$dir" "$BUILDER_IMAGE" \
    "ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:$BASE_PATH" \
    'ENV CARGO_HOME=/usr/local/cargo' 'ENV LANG=C.UTF-8' 'CMD ["bash"]' \
    "LABEL sitewatch.local.packages=$BUILDER_PACKAGES" \
    "LABEL sitewatch.local.rustc=\"$version\""
  timed "builder: clean root filesystem" cleanup_rootfs "$dir"
}

postgres_inputs() {
  cat "$here/postgres.Dockerfile" "$here/postgres-entrypoint.sh" | sha256sum | cut -c1-16
  docker image inspect -f '{{.Id}}' "$RUNTIME_IMAGE"
}

make_postgres() {
  local inputs
  inputs=$(postgres_inputs | paste -sd@)
  local no_cache=()
  ! $rebuild || no_cache=(--no-cache)
  timed "postgres: docker build" docker build --network host -q "${no_cache[@]}" \
    --build-arg "BASE=$RUNTIME_IMAGE" --label "sitewatch.local.inputs=$inputs" \
    -t "$POSTGRES_IMAGE" -f "$here/postgres.Dockerfile" "$here" >/dev/null
}

# --- checks -------------------------------------------------------------------------
pg_check_name=sitewatch-local-pgcheck-$$
pg_check_cleanup() {
  docker rm -f "$pg_check_name" >/dev/null 2>&1 || true
  docker volume rm "$pg_check_name" >/dev/null 2>&1 || true
}

pg_check_start() {
  docker run -d --name "$pg_check_name" -p 127.0.0.1::5432 \
    -e POSTGRES_USER=sitewatch -e POSTGRES_PASSWORD=check-secret -e POSTGRES_DB=sitewatch \
    -v "$pg_check_name:/var/lib/postgresql/data" "$POSTGRES_IMAGE" >/dev/null
  local i
  for ((i = 0; i < 240; i++)); do
    if [[ $(docker inspect -f '{{.State.Running}}' "$pg_check_name") != true ]]; then
      docker logs "$pg_check_name" >&2 || true
      die "postgres check: the container stopped"
    fi
    docker exec "$pg_check_name" pg_isready -q -h /var/run/postgresql && return 0
    sleep 0.25
  done
  docker logs "$pg_check_name" >&2 || true
  die "postgres check: not ready after 60 s"
}

pg_check_psql() {
  local port
  port=$(docker port "$pg_check_name" 5432/tcp | head -n1 | sed 's/.*://')
  if command -v psql >/dev/null; then
    PGPASSWORD=${PGPASSWORD:-check-secret} psql -h 127.0.0.1 -p "$port" -U sitewatch -d sitewatch \
      -X -v ON_ERROR_STOP=1 -tA "$@"
  else
    docker run --rm --network host -e PGPASSWORD="${PGPASSWORD:-check-secret}" "$POSTGRES_IMAGE" \
      psql -h 127.0.0.1 -p "$port" -U sitewatch -d sitewatch -X -v ON_ERROR_STOP=1 -tA "$@"
  fi
}

pg_check_stop() {
  docker stop "$pg_check_name" >/dev/null
  local rc
  rc=$(docker inspect -f '{{.State.ExitCode}}' "$pg_check_name")
  [[ $rc == 0 ]] || {
    docker logs "$pg_check_name" >&2
    die "postgres check: exit code $rc after docker stop"
  }
}

verify_postgres() {
  pg_check_cleanup
  trap 'pg_check_cleanup; cleanup_all; print_timings' EXIT
  timed "postgres check: first start (initdb) to ready" pg_check_start
  [[ $(pg_check_psql -c 'select 1') == 1 ]] || die "postgres check: select 1 did not answer 1"
  log "postgres check: psql -h 127.0.0.1 -U sitewatch (scram-sha-256): select 1 -> 1"
  if PGPASSWORD=wrong pg_check_psql -c 'select 1' >/dev/null 2>&1; then
    die "postgres check: a wrong password was accepted"
  fi
  log "postgres check: a wrong password is refused"
  pg_check_psql -c 'create table check_marker (n int); insert into check_marker values (42)' >/dev/null
  timed "postgres check: docker stop (SIGINT)" pg_check_stop
  log "postgres check: docker stop -> exit code 0"
  docker start "$pg_check_name" >/dev/null
  timed "postgres check: second start to ready" pg_check_wait_ready
  [[ $(pg_check_psql -c 'select n from check_marker') == 42 ]] || die "postgres check: data not kept"
  docker logs "$pg_check_name" 2>&1 | grep -q 'holds a database already' || die "postgres check: initialized again"
  log "postgres check: second start reused the data (no initdb, marker row there)"
  docker kill -s TERM "$pg_check_name" >/dev/null
  local rc
  rc=$(docker wait "$pg_check_name")
  [[ $rc == 0 ]] || die "postgres check: exit code $rc after SIGTERM"
  log "postgres check: SIGTERM -> exit code 0"
  pg_check_cleanup
}

pg_check_wait_ready() {
  local i
  for ((i = 0; i < 240; i++)); do
    docker exec "$pg_check_name" pg_isready -q -h /var/run/postgresql 2>/dev/null && return 0
    sleep 0.25
  done
  die "postgres check: not ready after 60 s"
}

verify_builder() {
  log "builder check: docker run --rm --network host $BUILDER_IMAGE cargo install cargo-chef --locked"
  timed "builder check: cargo install cargo-chef" docker run --rm --network host "$BUILDER_IMAGE" \
    bash -c 'cargo install cargo-chef --locked --quiet && cargo chef --version'
}

# --- main ---------------------------------------------------------------------------
check_docker
mkdir -p "$work"
work=$(cd "$work" && pwd)
exec 9>"$work/lock"
if ! flock -n 9; then
  log "another run holds $work/lock; waiting for it"
  flock 9
fi

runtime_made=false
if want runtime || { want postgres && ! image_exists "$RUNTIME_IMAGE"; }; then
  if image_exists "$RUNTIME_IMAGE" && ! $rebuild; then
    log "$RUNTIME_IMAGE exists; kept (--rebuild makes it again)"
  else
    ensure_debootstrap
    old=$(image_id "$RUNTIME_IMAGE")
    make_runtime
    drop_replaced "$old" "$RUNTIME_IMAGE"
    runtime_made=true
  fi
fi

if want builder; then
  if image_exists "$BUILDER_IMAGE" && ! $rebuild; then
    log "$BUILDER_IMAGE exists; kept (--rebuild makes it again)"
    have=$(image_label "$BUILDER_IMAGE" sitewatch.local.rustc)
    [[ $have == "$(toolchain_version)" ]] ||
      log "note: $BUILDER_IMAGE has ${have:-an unknown rustc}, this machine $(toolchain_version); --rebuild builder to update it"
  else
    ensure_debootstrap
    old=$(image_id "$BUILDER_IMAGE")
    make_builder
    drop_replaced "$old" "$BUILDER_IMAGE"
  fi
fi

if want postgres; then
  if image_exists "$POSTGRES_IMAGE" && ! $rebuild && ! $runtime_made &&
    [[ $(image_label "$POSTGRES_IMAGE" sitewatch.local.inputs) == "$(postgres_inputs | paste -sd@)" ]]; then
    log "$POSTGRES_IMAGE exists and is up to date; kept (--rebuild makes it again)"
  else
    old=$(image_id "$POSTGRES_IMAGE")
    make_postgres
    drop_replaced "$old" "$POSTGRES_IMAGE"
  fi
fi

if $verify; then
  if want postgres; then verify_postgres; fi
  if want builder; then verify_builder; fi
fi

docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}\t{{.CreatedSince}}' 'sitewatch-local/*' >&2
