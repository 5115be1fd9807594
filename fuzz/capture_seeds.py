#!/usr/bin/env python3
"""Capture real clients' bytes as fuzz seeds (run as root from the repository root; needs curl,
wrk and bird, which scripts/setup.sh installs). Writes fuzz/seeds/<target>/<name>:

- http_head: the request heads curl (several forms) and wrk send, read off a loopback socket;
- bgp_message: every message BIRD 2 sends on a session with a minimal passive peer here
  (OPEN, KEEPALIVE, UPDATEs with IPv4 and IPv6 routes, communities, End-of-RIB), each
  prefixed with the target's flag byte (1: 4-octet AS negotiated).

`cargo xtask fuzz` merges fuzz/seeds/<target> into the target's corpus before it runs."""
import os, socket, struct, subprocess, sys, tempfile, threading, time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")


def save(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def capture_http():
    clients = {
        "curl-get": ["curl", "-s", "-o", "/dev/null", "{url}/title1-1080p-seg0001.m4s"],
        "curl-range": ["curl", "-s", "-o", "/dev/null", "-r", "0-65535", "{url}/seg.m4s"],
        "curl-suffix": ["curl", "-s", "-o", "/dev/null", "-H", "Range: bytes=-500", "{url}/a"],
        "curl-head": ["curl", "-s", "-o", "/dev/null", "-I", "{url}/master.m3u8"],
        "curl-http10": ["curl", "-s", "-o", "/dev/null", "-0", "{url}/seg.m4s/range/0-99"],
        "curl-signed": ["curl", "-s", "-o", "/dev/null",
                        "{url}/seg.m4s?exp=1800000000&pfx=198.51.100.0/24&kid=k1&sig=" + "A" * 43],
        "curl-cors": ["curl", "-s", "-o", "/dev/null", "-H", "Origin: https://player.example",
                      "-H", "If-None-Match: \"5f3a-10\"", "-H", "If-Range: \"5f3a-10\"",
                      "-r", "100-", "{url}/seg.m4s"],
        "curl-options": ["curl", "-s", "-o", "/dev/null", "-X", "OPTIONS",
                         "-H", "Access-Control-Request-Headers: range", "{url}/seg.m4s"],
        "wrk": ["wrk", "-t1", "-c1", "-d1s", "-H", "Range: bytes=0-1023", "{url}/seg.m4s"],
    }
    for name, argv in clients.items():
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        url = "http://127.0.0.1:%d" % srv.getsockname()[1]
        proc = subprocess.Popen([a.replace("{url}", url) for a in argv],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        data = b""
        # wrk opens and closes a connection before its load; keep the first that asks.
        for _ in range(4):
            conn, _ = srv.accept()
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            conn.close()
            if data:
                break
        srv.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        save("http_head", name, data)
        print("http_head/%s: %d bytes" % (name, len(data)))


def bgp_open(asn, router_id):
    caps = b""
    for afi in (1, 2):
        caps += bytes([1, 4]) + struct.pack("!HBB", afi, 0, 1)  # multiprotocol
    caps += bytes([2, 0])  # route refresh
    caps += bytes([65, 4]) + struct.pack("!I", asn)  # 4-octet AS
    params = bytes([2, len(caps)]) + caps
    body = struct.pack("!BHH4sB", 4, asn if asn < 65536 else 23456, 90,
                       socket.inet_aton(router_id), len(params)) + params
    return b"\xff" * 16 + struct.pack("!HB", 19 + len(body), 1) + body


def capture_bgp():
    work = tempfile.mkdtemp(prefix="edgeplane-seeds-")
    conf = os.path.join(work, "bird.conf")
    with open(conf, "w") as f:
        f.write("""router id 192.0.2.1;
protocol device {}
protocol static s4 { ipv4; route 198.51.100.0/24 blackhole; route 203.0.113.0/25 blackhole; route 100.64.0.0/10 blackhole; }
protocol static s6 { ipv6; route 2001:db8:100::/48 blackhole; route 2001:db8:200::/40 blackhole; }
protocol bgp peer {
  local 127.0.0.1 as 64512; neighbor 127.0.0.2 port %d as 65001; multihop;
  ipv4 { export filter { bgp_community.add((64512, 100)); accept; }; import none; next hop self; };
  ipv6 { export all; import none; next hop address 2001:db8::1; };
}
""")
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.2", 0))
    port = srv.getsockname()[1]
    with open(conf) as f:
        text = f.read() % port
    with open(conf, "w") as f:
        f.write(text)
    srv.listen(1)
    bird = subprocess.Popen(["bird", "-f", "-c", conf, "-s", os.path.join(work, "ctl")])
    srv.settimeout(20)
    conn, _ = srv.accept()
    conn.sendall(bgp_open(65001, "192.0.2.2"))
    conn.sendall(b"\xff" * 16 + struct.pack("!HB", 19, 4))
    conn.settimeout(0.5)
    data, deadline = b"", time.time() + 6
    while time.time() < deadline:
        try:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        except socket.timeout:
            pass
    bird.terminate()
    bird.wait()
    n = 0
    while len(data) >= 19:
        length = struct.unpack("!H", data[16:18])[0]
        msg, data = data[:length], data[length:]
        save("bgp_message", "bird-%02d-type%d" % (n, msg[18]), b"\x01" + msg)
        n += 1
    print("bgp_message: %d messages from BIRD" % n)


if __name__ == "__main__":
    capture_http()
    if os.geteuid() == 0 or "--bgp" in sys.argv:
        capture_bgp()
