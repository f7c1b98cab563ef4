# Sourced by the scripts whose tier files have an NBD tier (tier 5).
# start_nbd DIR NAME: qemu-nbd serving a fresh 1 GiB raw image DIR/tier5.img on
# DIR/nbd.sock, export "", two clients at a time (the fault handler and the migrator
# thread each connect). Sets nbd_pid (the caller's EXIT trap ends it); stops with one
# line prefixed NAME if the socket does not appear.
start_nbd() {
    qemu-img create -q -f raw "$1/tier5.img" 1G
    qemu-nbd -k "$1/nbd.sock" -f raw -x '' --cache=none --persistent -e 2 "$1/tier5.img" &
    nbd_pid=$!
    for _ in $(seq 100); do
        [ -S "$1/nbd.sock" ] && return 0
        sleep 0.05
    done
    echo "$2: qemu-nbd did not start" >&2
    exit 1
}
