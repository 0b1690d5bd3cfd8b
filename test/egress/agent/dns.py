"""Resolves a name the way agent code does (getaddrinfo, i.e. the pod's
resolv.conf), or sends one raw UDP query to --server to show that even a
query aimed at a real resolver is answered by the router's stub."""
import random
import socket
import struct
import sys

if sys.argv[1] == "--server":
    server, name = sys.argv[2], sys.argv[3]
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(q, (server, 53))
    resp, _ = s.recvfrom(1500)
    print("rcode", resp[3] & 0x0F)
    sys.exit(0)

try:
    infos = socket.getaddrinfo(sys.argv[1], 443, socket.AF_INET, socket.SOCK_STREAM)
    print(" ".join(sorted({i[4][0] for i in infos})))
except socket.gaierror as e:
    print("gaierror", e.errno, e.strerror)
    sys.exit(1)
