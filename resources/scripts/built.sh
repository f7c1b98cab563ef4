# Sourced by the scripts that run what `make build` makes. Sets TIERVISOR and GUEST
# (overridable from the environment), stops with one line if either is missing, and
# defines disk_workdir (below).
# Usage: . resources/scripts/built.sh NAME   (NAME prefixes the error line)
TIERVISOR=${TIERVISOR:-target/release/tiervisor}
GUEST=${GUEST:-resources/out/testguest.elf}
for f in "$TIERVISOR" "$GUEST"; do
    if [ ! -e "$f" ]; then
        echo "$1: $f is missing: run \`make build\` first" >&2
        exit 1
    fi
done

# disk_workdir NAME: makes a fresh directory target/NAME.XXXXXX and prints its absolute
# path. Tier files are opened O_DIRECT, which needs a disk file system: under target/,
# not /tmp (often tmpfs).
disk_workdir() {
    mkdir -p target && (cd "$(mktemp -d -p target "$1.XXXXXX")" && pwd)
}
