#!/bin/sh
# Runs inside the sandbox as the agent (UID 1000): every client the
# egress tests exercise, one RESULT line each.
export PATH=/usr/bin:/bin
CA=/sandbox/ca.pem
r() {
  name=$1; shift
  out=$("$@" 2>&1); rc=$?
  printf 'RESULT %s %s %s\n' "$name" "$rc" "$(printf '%s' "$out" | tr '\n' ' ' | cut -c1-500)"
}
# The agent's chat port, bound on every address: only the pod itself may
# reach it (the egress guard's input chain).
"$PYTHON" -c 'import socket,time
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 18789)); s.listen(8); print("LISTENING", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"agent\n"); c.close()' &
c="curl -sS --max-time 10 --cacert $CA"
r curl-explicit-https $c https://allowed.kars.test/
r curl-explicit-http $c http://allowed.kars.test/
r curl-blocked $c https://blocked.kars.test/
r curl-unlisted $c https://unlisted.kars.test/
r curl-port-mismatch $c https://allowed.kars.test:8443/
r curl-rebind-metadata $c https://meta.kars.test/
r curl-rebind-private $c https://private.kars.test/
r curl-transparent-https $c --noproxy '*' https://allowed.kars.test/
r curl-transparent-http $c --noproxy '*' http://allowed.kars.test/
r curl-transparent-unlisted $c --noproxy '*' https://unlisted.kars.test/
r curl-transparent-unlisted-by-ip $c --noproxy '*' --resolve unlisted.kars.test:443:203.0.113.12 https://unlisted.kars.test/
r curl-transparent-port-mismatch $c --noproxy '*' https://allowed.kars.test:8443/
r dns-allowed "$PYTHON" /sandbox/dns.py allowed.kars.test
r dns-unlisted "$PYTHON" /sandbox/dns.py unlisted.kars.test
r dns-blocked "$PYTHON" /sandbox/dns.py blocked.kars.test
r dns-metadata "$PYTHON" /sandbox/dns.py meta.kars.test
r dns-private "$PYTHON" /sandbox/dns.py private.kars.test
r dns-direct-to-resolver "$PYTHON" /sandbox/dns.py --server 203.0.113.53 tunnel-probe.kars.test
r httpx-allowed "$PYTHON" /sandbox/clients.py httpx https://allowed.kars.test/
r httpx-unlisted "$PYTHON" /sandbox/clients.py httpx https://unlisted.kars.test/
r httpx-port-mismatch "$PYTHON" /sandbox/clients.py httpx https://allowed.kars.test:8443/
r requests-allowed "$PYTHON" /sandbox/clients.py requests https://allowed.kars.test/
r requests-blocked "$PYTHON" /sandbox/clients.py requests https://blocked.kars.test/
r node-fetch-allowed node /sandbox/fetch.mjs https://allowed.kars.test/
r node-fetch-unlisted node /sandbox/fetch.mjs https://unlisted.kars.test/
r node-fetch-blocked-by-ip node /sandbox/fetch.mjs https://203.0.113.11/
r node-fetch-port-mismatch node /sandbox/fetch.mjs https://allowed.kars.test:8443/
echo "PROBES DONE"
wait
