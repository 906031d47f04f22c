#!/bin/sh
# Builds the two base images examples/containers needs, from this machine's own binaries: there
# is no registry to pull from. Each is `FROM scratch` around the binaries, the libraries `ldd`
# lists for them (at their own paths) and Debian's static busybox for a shell:
#
#   tug-example-demo:local    tug's demo HTTP service (crates/demo); web/Dockerfile starts FROM it
#   tug-example-redis:local   redis-server and redis-cli; /data belongs to uid 999, Redis's user
#
# Run it again at will: unchanged binaries give the same images (the engine's build cache compares
# the files' content), so nothing built FROM them changes either.
# Environment: TUG_DEMO, the demo binary to use (default: `cargo build --release -p tug-demo`,
# then ${CARGO_TARGET_DIR:-target}/release/tug-demo); DEMO_IMAGE and REDIS_IMAGE, other tags.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
DEMO_IMAGE=${DEMO_IMAGE:-tug-example-demo:local}
REDIS_IMAGE=${REDIS_IMAGE:-tug-example-redis:local}

fail() { printf 'prepare.sh: %s\n' "$@" >&2; exit 1; }
has() { command -v "$1" >/dev/null 2>&1; }

# What this machine must have: every missing piece is named at once.
set --
has docker || set -- "$@" "docker is not installed (Debian: apt-get install docker.io)"
if has docker && ! docker info >/dev/null 2>"${TMPDIR:-/tmp}/prepare-docker-info.$$"; then
    set -- "$@" "the Docker Engine does not answer: $(tail -n 1 "${TMPDIR:-/tmp}/prepare-docker-info.$$")"
fi
rm -f "${TMPDIR:-/tmp}/prepare-docker-info.$$"
has ldd || set -- "$@" "ldd is missing (Debian: apt-get install libc-bin)"
if [ ! -x /bin/busybox ]; then
    set -- "$@" "/bin/busybox is missing: apt-get install busybox-static"
elif ldd /bin/busybox 2>&1 | grep -q '=>'; then
    set -- "$@" "/bin/busybox is not static (Debian's busybox package): apt-get install busybox-static"
fi
has redis-server || set -- "$@" "redis-server is missing: apt-get install redis-server"
has redis-cli || set -- "$@" "redis-cli is missing: apt-get install redis-tools"
[ $# -eq 0 ] || fail "$@"

# The demo service: the binary given, or a release build of the repository's.
if [ -n "${TUG_DEMO:-}" ]; then
    demo=$TUG_DEMO
else
    has cargo || fail "cargo is missing: install Rust (https://rustup.rs), or give a built tug-demo in TUG_DEMO"
    echo "building tug-demo (cargo build --release -p tug-demo)"
    (cd "$repo" && cargo build --release -q -p tug-demo)
    demo=${CARGO_TARGET_DIR:-$repo/target}/release/tug-demo
fi
[ -x "$demo" ] || fail "$demo is not an executable file"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Copies a binary to /usr/local/bin of the root folder $1, and every library it loads to its own
# path. (`cp` follows symbolic links: Debian's redis-server is a link to redis-check-rdb, and Redis
# chooses what it does by the name it runs under.)
add_binary() {
    mkdir -p "$1/usr/local/bin"
    cp "$2" "$1/usr/local/bin/$(basename "$2")"
    ldd "$2" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) { print $i; break } }' | while read -r lib; do
        mkdir -p "$1$(dirname "$lib")"
        cp "$lib" "$1$lib"
    done
}

# build TAG "Dockerfile lines after the shell is installed" BINARY...
build() {
    tag=$1 tail=$2
    shift 2
    ctx="$work/$(echo "$tag" | tr -c 'a-zA-Z0-9\n' _)"
    mkdir -p "$ctx/rootfs/bin" "$ctx/rootfs/tmp"
    chmod 1777 "$ctx/rootfs/tmp"
    cp /bin/busybox "$ctx/rootfs/bin/busybox"
    for binary in "$@"; do
        add_binary "$ctx/rootfs" "$binary"
    done
    printf 'FROM scratch\nCOPY rootfs/ /\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n%s\n' "$tail" >"$ctx/Dockerfile"
    # (The legacy builder's deprecation notice on stderr is shown only when the build fails.)
    id=$(docker build -q -t "$tag" "$ctx" 2>"$work/build.err") || { cat "$work/build.err" >&2; fail "docker build of $tag failed"; }
    echo "$tag: $id"
}

build "$DEMO_IMAGE" 'CMD ["/usr/local/bin/tug-demo"]' "$demo"
build "$REDIS_IMAGE" 'RUN mkdir -p /data && chown 999:999 /data
WORKDIR /data
CMD ["/usr/local/bin/redis-server"]' "$(command -v redis-server)" "$(command -v redis-cli)"
