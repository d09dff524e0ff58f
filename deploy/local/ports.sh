# shellcheck shell=bash
# free_ports N SPAN: prints N free loopback ports, then a base whose next SPAN ports
# (base+1 .. base+SPAN, e.g. worker-i's /metrics on base+i) are free and not among the N.
# Sourced before lib.sh by the scripts that choose their ports (bench/run.sh,
# deploy/local/scaling.sh), since lib.sh reads the chosen ports when it is sourced.
free_ports() {
  python3 - "$1" "$2" <<'PYEOF'
import random, socket, sys

def free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False

n, span = int(sys.argv[1]), int(sys.argv[2])
held = [socket.socket() for _ in range(n)]
for s in held:
    s.bind(("127.0.0.1", 0))
ports = [s.getsockname()[1] for s in held]
for _ in range(1000):
    base = random.randrange(20000, 60000)
    rng = range(base + 1, base + span + 1)
    if all(free(p) for p in rng) and not set(ports) & set(rng):
        print(*ports, base)
        sys.exit(0)
sys.exit("no run of %d free ports found" % span)
PYEOF
}
