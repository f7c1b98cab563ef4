# Sourced by the scripts that run what `make build` makes. Sets TIERVISOR and GUEST
# (overridable from the environment) and stops with one line if either is missing.
# Usage: . resources/scripts/built.sh NAME   (NAME prefixes the error line)
TIERVISOR=${TIERVISOR:-target/release/tiervisor}
GUEST=${GUEST:-resources/out/testguest.elf}
for f in "$TIERVISOR" "$GUEST"; do
    if [ ! -e "$f" ]; then
        echo "$1: $f is missing: run \`make build\` first" >&2
        exit 1
    fi
done
