#!/usr/bin/env bash
# Benchmark: tug running containers, against Docker Compose, side by side in one run.
#   1. `tug up -d` of 20 containers in five levels of four (each service of level k > 0 depends on
#      every service of level k-1, `healthy`), each ready 200 ms after it starts, so the critical
#      path is 5 x 200 ms = 1.0 s; against `docker-compose up -d` and then waiting until every
#      container is healthy (Compose v1 has no `--wait`: emulated by polling `docker inspect`),
#      on the same image and the same exec healthcheck; plus tug with its own http probe.
#   2. The added start cost of a container over a process: `tug up -d` of 20 independent services
#      as containers and as processes; the difference / 20; `docker run -d` + `docker rm -f` as a
#      reference.
#   3. The daemon's VmRSS with the 20 containers up.
# Prints a table; writes nothing outside a temporary folder; leaves no container, network or image.
#
# Knobs (environment): ROUNDS (5), TUG_BIN / DEMO_BIN (default target/release/tug, tug-demo),
# KEEP_IMAGES=1 (keep the image built), INIT=1 (`init: true` for every container, both tools),
# COMPOSE_INTERVALS ("100ms 1s": Compose's healthcheck interval, one case each; the first is the
# headline), START_PROBES ("tcp none"), SETTLE (1) seconds, then until under QUIET (0.25) cores are
# busy, before each case; DOCKER_RUNS (3) single `docker run` per round; POLL (0.02) seconds between
# two polls of the Compose wait; RESULTS=FILE (raw figures as JSON); TUG_PORT_RANGE (31000-31199;
# Compose takes 31300-31319, `docker run` 31399 and 31400-31419).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-5}
export COMPOSE_INTERVALS=${COMPOSE_INTERVALS:-100ms 1s}
compose_intervals=$COMPOSE_INTERVALS
for i in $compose_intervals; do [[ $i =~ ^[0-9]+(ms|s)$ ]] || { echo "COMPOSE_INTERVALS: $i is not like 100ms or 1s" >&2; exit 2; }; done
die() { echo "containers.sh: $*" >&2; exit 1; }

# Prerequisites.
command -v python3 >/dev/null || die "python3 is missing (apt-get install python3)"
command -v docker >/dev/null || die "the docker CLI is missing"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (\`docker info\` fails): is dockerd running, may this user reach its socket?"
command -v docker-compose >/dev/null || die "docker-compose (Compose v1) is missing: apt-get install docker-compose"
static_busybox() { [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; }   # ldd fails on a static binary
if ! static_busybox; then
  echo "containers.sh: installing busybox-static (the image needs a static /bin/busybox)" >&2
  { apt-get update -qq && apt-get install -y -qq busybox-static >/dev/null; } ||
    die "cannot install busybox-static: install it (apt-get install busybox-static)"
  static_busybox || die "/bin/busybox is not statically linked: install busybox-static (it replaces busybox)"
fi
tug_src=${TUG_BIN:-target/release/tug}
demo_src=${DEMO_BIN:-target/release/tug-demo}
for bin in "$tug_src" "$demo_src"; do
  [ -x "$bin" ] || die "$bin is not built: cargo build --release -p tug -p tug-demo (or set TUG_BIN, DEMO_BIN)"
done
if [ -z "${TUG_BIN:-}" ] && [ -n "$(find crates -name '*.rs' -newer "$tug_src" -print -quit)" ]; then
  echo "containers.sh: warning: sources changed since $tug_src was built; measuring it as it is" >&2
fi

work=$(mktemp -d /tmp/tug-bench-containers.XXXXXX)
tag="tug-bench-containers:$(basename "$work" | cut -d. -f2 | tr 'A-Z' 'a-z')"
project="tugbenchcontainers$(basename "$work" | cut -d. -f2 | tr -dc 'a-zA-Z0-9' | tr 'A-Z' 'a-z')"
cleanup() {
  set +e
  for stack in "$work"/*/tug.yaml; do
    [ -e "$stack" ] && "$work/tug" down -f "$stack" >/dev/null 2>&1
  done
  for file in "$work"/compose-*/docker-compose.yml; do
    [ -e "$file" ] && docker-compose -p "$project$(basename "$(dirname "$file")" | cut -d- -f2)" -f "$file" down -t 1 -v >/dev/null 2>&1
  done
  # Whatever is left of ours, by label.
  ids=$( { for i in $compose_intervals; do docker ps -aq --filter "label=com.docker.compose.project=$project$i"; done
           docker ps -aq --filter "label=tug-bench=$project"
           for d in "$work"/*/.tug; do [ -d "$d" ] && docker ps -aq --filter "label=tug.state_dir=$d"; done; } 2>/dev/null)
  [ -n "$ids" ] && docker rm -f -v $ids >/dev/null 2>&1
  if [ "${KEEP_IMAGES:-0}" != 1 ]; then
    docker image inspect "$tag" >/dev/null 2>&1 && docker rmi "$tag" >/dev/null
  else
    echo "kept the image $tag (docker rmi $tag)"
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

machine() { echo "$(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(ls /proc | grep -c '^[0-9]') processes, $(docker ps -q | wc -l) containers running"; }
echo "machine: $(machine)"
echo "tug: $tug_src ($(git log -1 --format=%h 2>/dev/null || echo ?)$(git diff --quiet HEAD -- crates 2>/dev/null || echo ', with uncommitted changes in crates/'))"
echo "$(docker version --format 'Docker Engine {{.Server.Version}}'), $(docker-compose version --short 2>/dev/null | sed 's/^/docker-compose /')"

# Private copies: a rebuild elsewhere in the workspace must not swap the binaries mid-run.
cp "$tug_src" "$work/tug"
cp "$demo_src" "$work/tug-demo"

# The image: FROM scratch, the demo and the libraries `ldd` lists (at their paths), Debian's static
# busybox with its applets as links in /bin (the healthcheck's `sh` and `wget`).
ctx="$work/image"
mkdir -p "$ctx/rootfs/bin" "$ctx/rootfs/usr/local/bin"
cp "$work/tug-demo" "$ctx/rootfs/usr/local/bin/tug-demo"
cp /bin/busybox "$ctx/rootfs/bin/busybox"
for lib in $(ldd "$work/tug-demo" | grep -o '/[^ ]*'); do
  mkdir -p "$ctx/rootfs$(dirname "$lib")"
  cp -L "$lib" "$ctx/rootfs$lib"
done
cat > "$ctx/Dockerfile" <<'EOF'
FROM scratch
COPY rootfs/ /
RUN ["/bin/busybox", "--install", "-s", "/bin"]
CMD ["/usr/local/bin/tug-demo"]
EOF
echo "building $tag ($(du -sh "$ctx/rootfs" | cut -f1))"
docker build -q --force-rm -t "$tag" "$ctx" >/dev/null 2>"$work/build.log" || { cat "$work/build.log" >&2; die "docker build failed"; }
rm -rf "$ctx"

# The stacks, one folder each (a tug stack keeps its state in its folder's .tug/).
gen="python3 bench/containers/gen.py"
init=()
[ "${INIT:-0}" = 1 ] && init=(--init)
mkdir -p "$work"/{tug-exec,tug-http}
$gen levels --tool tug --probe exec --image "$tag" "${init[@]}" > "$work/tug-exec/tug.yaml"
$gen levels --tool tug --probe http --image "$tag" "${init[@]}" > "$work/tug-http/tug.yaml"
for i in $compose_intervals; do
  mkdir -p "$work/compose-$i"
  $gen levels --tool compose --probe exec --start-interval "$i" --image "$tag" "${init[@]}" > "$work/compose-$i/docker-compose.yml"
  docker-compose -p "$project$i" -f "$work/compose-$i/docker-compose.yml" config -q || die "the Compose file does not validate"
done
for probe in ${START_PROBES:-tcp none}; do
  for kind in container process; do
    mkdir -p "$work/start-$kind-$probe"
    $gen flat --kind "$kind" --probe "$probe" --image "$tag" --demo "$work/tug-demo" "${init[@]}" > "$work/start-$kind-$probe/tug.yaml"
  done
done
for stack in "$work"/*/tug.yaml; do
  "$work/tug" check -f "$stack" >/dev/null || { "$work/tug" check -f "$stack"; die "$stack does not check"; }
done

export TUG_PORT_RANGE=${TUG_PORT_RANGE:-31000-31199}
python3 bench/containers/run.py "$work" "$work/tug" "$work/tug-demo" "$tag" "$rounds" "$project"
echo "machine after: $(machine)"
