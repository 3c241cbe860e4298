#!/usr/bin/env python3
"""Writes the labelled log sets of the detect-quality harness (deterministic).

Each set is `<name>.log` (the raw lines, exactly as the agent or `node-agent logs` would
read them) and `<name>.events` (the ground-truth event id of every physical line). The
events follow the real formats they imitate: HDFS DataNode/NameNode, nginx access + error
logs, kubelet (klog), a JSON-logging web app, OpenSSH/syslog, and a Spring Boot app behind
containerd's CRI log format (with partial lines). Variable parts vary the way they do in
the wild: ids, addresses, users, paths, durations, sizes, and a few free-text fields.

Run from this directory: python3 generate.py
"""
import random

N = 2000


def write(name, rows):
    with open(f"{name}.log", "w") as log, open(f"{name}.events", "w") as ev:
        for event, line in rows:
            log.write(line + "\n")
            ev.write(event + "\n")


def ip(r):
    return f"10.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"


def pick(r, weights):
    total = sum(w for _, w in weights)
    x = r.uniform(0, total)
    for item, w in weights:
        x -= w
        if x <= 0:
            return item
    return weights[-1][0]


def hdfs():
    r = random.Random(1)
    rows = []
    t = 203500
    for _ in range(N):
        t += r.randint(0, 3)
        hh, mm, ss = (t // 10000) % 24, (t // 100) % 60, t % 60
        head = f"081109 {hh:02d}{mm:02d}{ss:02d} {r.randint(13, 3500)}"
        blk = f"blk_{r.choice(['', '-'])}{r.randint(10**17, 10**19)}"
        size = r.choice([67108864, r.randint(1000, 67108864)])
        e = pick(r, [("E1", 20), ("E2", 20), ("E3", 18), ("E4", 15), ("E5", 8), ("E6", 5), ("E7", 4), ("E8", 3),
                     ("E9", 3), ("E10", 2), ("E11", 1), ("E12", 1)])
        line = {
            "E1": f"{head} INFO dfs.DataNode$PacketResponder: PacketResponder {r.randint(0, 2)} for block {blk} terminating",
            "E2": f"{head} INFO dfs.DataNode$PacketResponder: Received block {blk} of size {size} from /{ip(r)}",
            "E3": f"{head} INFO dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: blockMap updated: {ip(r)}:50010 is added to {blk} size {size}",
            "E4": f"{head} INFO dfs.DataNode$DataXceiver: Receiving block {blk} src: /{ip(r)}:{r.randint(30000, 60000)} dest: /{ip(r)}:50010",
            "E5": f"{head} INFO dfs.FSNamesystem: BLOCK* NameSystem.allocateBlock: /user/root/rand{r.randint(1, 9)}/_temporary/_task_200811092030_{r.randint(1, 9):04d}_m_{r.randint(0, 999):06d}_0/part-{r.randint(0, 999):05d}. {blk}",
            "E6": f"{head} INFO dfs.DataNode$DataXceiver: {ip(r)}:50010 Served block {blk} to /{ip(r)}",
            "E7": f"{head} WARN dfs.DataNode$DataXceiver: {ip(r)}:50010:Got exception while serving {blk} to /{ip(r)}:",
            "E8": f"{head} INFO dfs.FSDataset: Deleting block {blk} file /mnt/hadoop/dfs/data/current/subdir{r.randint(0, 63)}/{blk}",
            "E9": f"{head} INFO dfs.FSNamesystem: BLOCK* NameSystem.delete: {blk} is added to invalidSet of {ip(r)}:50010",
            "E10": f"{head} INFO dfs.DataBlockScanner: Verification succeeded for {blk}",
            "E11": f"{head} INFO dfs.DataNode: {ip(r)}:50010 Starting thread to transfer block {blk} to {ip(r)}:50010",
            "E12": f"{head} WARN dfs.DataNode$DataXceiver: writeBlock {blk} received exception java.io.IOException: Connection reset by peer",
        }[e]
        rows.append((e, line))
    return rows


UAS = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
    "curl/8.4.0",
    "kube-probe/1.28",
    "Go-http-client/1.1",
    "python-requests/2.31.0",
]
PATHS = ["/", "/index.html", "/api/v1/users", "/api/v1/orders", "/static/app.js", "/healthz", "/login", "/favicon.ico"]


def nginx():
    r = random.Random(2)
    rows = []
    for i in range(N):
        day, hh, mm, ss = 10 + i // 1500, (i // 60) % 24, i % 60, r.randint(0, 59)
        e = pick(r, [("A1", 80), ("N1", 5), ("N2", 4), ("N3", 4), ("N4", 3), ("N5", 2), ("N6", 2)])
        if e == "A1":
            path = r.choice(PATHS) + (f"/{r.randint(1, 99999)}" if r.random() < 0.3 else "")
            if r.random() < 0.2:
                path += f"?page={r.randint(1, 50)}&sort={r.choice(['asc', 'desc'])}"
            method = r.choice(["GET", "GET", "GET", "POST", "PUT", "DELETE"])
            status = r.choice([200, 200, 200, 201, 204, 301, 304, 400, 404, 500, 502])
            user = r.choice(["-", "-", "-", "alice", "bob"])
            ref = r.choice(["-", "https://example.com/", f"https://example.com/page/{r.randint(1, 9)}"])
            line = (f'{ip(r)} - {user} [{day:02d}/Oct/2023:{hh:02d}:{mm:02d}:{ss:02d} +0000] "{method} {path} HTTP/1.1" '
                    f'{status} {r.randint(0, 50000)} "{ref}" "{r.choice(UAS)}"')
        else:
            head = f"2023/10/{day:02d} {hh:02d}:{mm:02d}:{ss:02d}"
            pid, conn = r.randint(10, 99), r.randint(1, 999999)
            req = f'"{r.choice(["GET", "POST"])} {r.choice(PATHS)} HTTP/1.1"'
            up = f"{ip(r)}:{r.choice([8080, 9000, 3000])}"
            line = {
                "N1": f'{head} [error] {pid}#{pid}: *{conn} connect() failed (111: Connection refused) while connecting to upstream, client: {ip(r)}, server: example.com, request: {req}, upstream: "http://{up}/", host: "example.com"',
                "N2": f'{head} [error] {pid}#{pid}: *{conn} upstream timed out (110: Connection timed out) while reading response header from upstream, client: {ip(r)}, server: example.com, request: {req}, upstream: "http://{up}/", host: "example.com"',
                "N3": f'{head} [warn] {pid}#{pid}: *{conn} an upstream response is buffered to a temporary file /var/cache/nginx/proxy_temp/{r.randint(1, 9)}/{r.randint(10, 99)}/{r.randint(10**9, 10**10)} while reading upstream, client: {ip(r)}, server: example.com, request: {req}, upstream: "http://{up}/", host: "example.com"',
                "N4": f'{head} [error] {pid}#{pid}: *{conn} open() "/usr/share/nginx/html{r.choice(PATHS)}" failed (2: No such file or directory), client: {ip(r)}, server: example.com, request: {req}, host: "example.com"',
                "N5": f"{head} [notice] {pid}#{pid}: signal process started",
                "N6": f'{head} [error] {pid}#{pid}: *{conn} client intended to send too large body: {r.randint(10**6, 10**8)} bytes, client: {ip(r)}, server: example.com, request: {req}, host: "example.com"',
            }[e]
        rows.append((e, line))
    return rows


def pod(r):
    app = r.choice(["web", "api", "worker", "redis", "postgres"])
    return f"{r.choice(['default', 'prod', 'kube-system'])}/{app}-{r.randint(10**8, 10**9):x}-{''.join(r.choice('bcdfghjklmnpqrstvwxz2456789') for _ in range(5))}"


def kubelet():
    r = random.Random(3)
    rows = []
    for i in range(N):
        e = pick(r, [("K1", 20), ("K2", 15), ("K3", 12), ("K4", 10), ("K5", 8), ("K6", 8), ("K7", 7), ("K8", 6),
                     ("K9", 5), ("K10", 4), ("K11", 3), ("K12", 2)])
        level = "E" if e in ("K6", "K9", "K12") else ("W" if e in ("K8",) else "I")
        ts = f"{level}1012 {(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:{i % 60:02d}.{r.randint(0, 999999):06d}"
        head = f"{ts}    {r.randint(1000, 9999)}"
        p = pod(r)
        cid = "".join(r.choice("0123456789abcdef") for _ in range(64))
        line = {
            "K1": f'{head} kubelet.go:2457] "SyncLoop (PLEG): event for pod" pod="{p}" event={{"ID":"{r.randint(10**8, 10**9)}","Type":"ContainerStarted","Data":"{cid}"}}',
            "K2": f'{head} kubelet.go:2430] "SyncLoop UPDATE" source="api" pods=["{p}"]',
            "K3": f'{head} prober.go:107] "Probe failed" probeType="Readiness" pod="{p}" podUID="{r.randint(10**8, 10**9)}" containerName="{r.choice(["app", "sidecar", "proxy"])}" probeResult="failure" output="Get \\"http://{ip(r)}:8080/healthz\\": dial tcp {ip(r)}:8080: connect: connection refused"',
            "K4": f'{head} kubelet.go:2424] "SyncLoop ADD" source="api" pods=["{p}"]',
            "K5": f'{head} reconciler_common.go:258] "operationExecutor.VerifyControllerAttachedVolume started for volume \\"kube-api-access-{r.randint(10000, 99999)}\\"" pod="{p}"',
            "K6": f'{head} pod_workers.go:1300] "Error syncing pod, skipping" err="failed to \\"StartContainer\\" for \\"app\\" with CrashLoopBackOff: \\"back-off {r.choice([10, 20, 40, 80, 160, 300])}s restarting failed container\\"" pod="{p}"',
            "K7": f'{head} kuberuntime_container.go:{r.choice([745, 770])}] "Killing container with a grace period" pod="{p}" containerName="{r.choice(["app", "sidecar"])}" containerID="containerd://{cid}" gracePeriod={r.choice([30, 60])}',
            "K8": f'{head} eviction_manager.go:{r.choice([366, 370])}] "Eviction manager: attempting to reclaim" resourceName="{r.choice(["memory", "ephemeral-storage", "nodefs"])}"',
            "K9": f'{head} remote_runtime.go:{r.choice([343, 396])}] "ContainerStatus from runtime service failed" err="rpc error: code = NotFound desc = an error occurred when try to find container \\"{cid}\\": not found" containerID="{cid}"',
            "K10": f'{head} kubelet_node_status.go:{r.choice([72, 112])}] "Successfully registered node" node="node-{r.randint(1, 40)}"',
            "K11": f'{head} topology_manager.go:{r.choice([215, 216])}] "Topology Admit Handler" podUID="{r.randint(10**8, 10**9)}" podNamespace="{p.split("/")[0]}" podName="{p.split("/")[1]}"',
            "K12": f'{head} kubelet.go:{r.choice([1888, 1922])}] "Unable to attach or mount volumes for pod; skipping pod" err="unmounted volumes=[data], unattached volumes=[], failed to process volumes=[]: timed out waiting for the condition" pod="{p}"',
        }[e]
        rows.append((e, line))
    return rows


def appjson():
    r = random.Random(4)
    rows = []
    for i in range(N):
        e = pick(r, [("J1", 40), ("J2", 12), ("J3", 10), ("J4", 8), ("J5", 8), ("J6", 6), ("J7", 5), ("J8", 5), ("J9", 4), ("J10", 2)])
        ts = f"2024-03-0{1 + i // 1000}T{(i // 60) % 24:02d}:{i % 60:02d}:{r.randint(0, 59):02d}.{r.randint(0, 999):03d}Z"
        rid = "".join(r.choice("0123456789abcdef") for _ in range(16))
        user = r.choice(["alice", "bob", "carol", "dave", f"user{r.randint(1, 999)}"])
        fields = {
            "J1": ("info", "request completed", {"method": r.choice(["GET", "POST", "PUT"]), "path": f"/api/v1/{r.choice(['users', 'orders', 'items'])}/{r.randint(1, 9999)}", "status": r.choice([200, 201, 204, 404]), "duration_ms": round(r.uniform(0.5, 900), 2), "request_id": rid}),
            "J2": ("info", "user logged in", {"user": user, "ip": ip(r), "mfa": r.choice([True, False])}),
            "J3": ("warn", "slow query", {"table": r.choice(["orders", "users", "events"]), "duration_ms": r.randint(500, 9000), "rows": r.randint(0, 100000)}),
            "J4": ("info", "cache miss", {"key": f"user:{r.randint(1, 99999)}:profile", "backend": "redis"}),
            "J5": ("debug", "job scheduled", {"job": r.choice(["send-email", "resize-image", "sync-crm"]), "queue": r.choice(["default", "high"]), "job_id": r.randint(10**5, 10**7)}),
            "J6": ("error", "payment failed", {"order_id": r.randint(10**5, 10**7), "reason": r.choice(["card declined", "insufficient funds", "gateway timeout"]), "amount": round(r.uniform(1, 500), 2)}),
            "J7": ("info", "user logged out", {"user": user, "session_s": r.randint(10, 90000)}),
            "J8": ("warn", "rate limit exceeded", {"client": ip(r), "limit": r.choice([100, 1000]), "window_s": 60}),
            "J9": ("info", "config reloaded", {"version": f"v{r.randint(1, 9)}.{r.randint(0, 20)}.{r.randint(0, 9)}", "changed_keys": r.randint(0, 12)}),
            "J10": ("error", "database connection lost", {"host": f"db-{r.randint(0, 2)}.internal", "retry_in_ms": r.choice([100, 200, 400, 800])}),
        }[e]
        level, msg, extra = fields
        obj = {"time": ts, "level": level, "msg": msg, **extra}
        import json
        rows.append((e, json.dumps(obj, separators=(",", ":"))))
    return rows


def syslog():
    r = random.Random(5)
    rows = []
    users = ["root", "admin", "test", "oracle", "ubuntu", "git", "postgres", "guest", "pi", "ftpuser"]
    for i in range(N):
        e = pick(r, [("S1", 18), ("S2", 14), ("S3", 12), ("S4", 10), ("S5", 10), ("S6", 8), ("S7", 8), ("S8", 6), ("S9", 5), ("S10", 4), ("S11", 3), ("S12", 2)])
        head = f"{r.choice(['Dec', 'Jan'])} {1 + (i // 200) % 28:2d} {(i // 60) % 24:02d}:{i % 60:02d}:{r.randint(0, 59):02d} LabSZ"
        pid = r.randint(1000, 32000)
        u = r.choice(users)
        a = f"{r.randint(1, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"
        port = r.randint(1024, 65535)
        line = {
            "S1": f"{head} sshd[{pid}]: Failed password for invalid user {u} from {a} port {port} ssh2",
            "S2": f"{head} sshd[{pid}]: Failed password for {u} from {a} port {port} ssh2",
            "S3": f"{head} sshd[{pid}]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost={a}  user={u}",
            "S4": f"{head} sshd[{pid}]: Received disconnect from {a}: 11: Bye Bye [preauth]",
            "S5": f"{head} sshd[{pid}]: Invalid user {u} from {a}",
            "S6": f"{head} sshd[{pid}]: input_userauth_request: invalid user {u} [preauth]",
            "S7": f"{head} sshd[{pid}]: Connection closed by {a} [preauth]",
            "S8": f"{head} sshd[{pid}]: Accepted password for {u} from {a} port {port} ssh2",
            "S9": f"{head} sshd[{pid}]: pam_unix(sshd:session): session opened for user {u} by (uid=0)",
            "S10": f"{head} sshd[{pid}]: reverse mapping checking getaddrinfo for {r.choice(['host', 'static', 'dsl'])}-{a.replace('.', '-')}.example.net [{a}] failed - POSSIBLE BREAK-IN ATTEMPT!",
            "S11": f"{head} CRON[{pid}]: pam_unix(cron:session): session closed for user {u}",
            "S12": f"{head} sshd[{pid}]: error: Received disconnect from {a}: 3: com.jcraft.jsch.JSchException: Auth fail [preauth]",
        }[e]
        rows.append((e, line))
    return rows


def spring_cri():
    r = random.Random(6)
    rows = []
    classes = ["c.e.shop.OrderController", "c.e.shop.UserService", "o.s.web.servlet.DispatcherServlet", "c.e.shop.PaymentClient"]
    for i in range(N):
        e = pick(r, [("P1", 30), ("P2", 15), ("P3", 12), ("P4", 10), ("P5", 8), ("P6", 8), ("P7", 6), ("P8", 5), ("P9", 4), ("P10", 2)])
        ts = f"2024-05-01T{(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:{i % 60:02d}.{r.randint(0, 999999999):09d}Z"
        app_ts = f"2024-05-01 {(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:{i % 60:02d}.{r.randint(0, 999):03d}"
        thread = f"[nio-8080-exec-{r.randint(1, 200)}]"
        lvl = {"P6": "ERROR", "P8": "WARN", "P10": "ERROR"}.get(e, " INFO")
        msg = {
            "P1": f"{classes[0]} : Order {r.randint(10**5, 10**7)} created for customer {r.randint(1, 99999)} with {r.randint(1, 20)} items",
            "P2": f"{classes[1]} : Fetched user {r.randint(1, 99999)} in {r.randint(1, 900)} ms",
            "P3": f"{classes[2]} : Completed initialization in {r.randint(1, 30)} ms",
            "P4": f"{classes[3]} : Charging card ending {r.randint(1000, 9999)} amount {r.randint(1, 999)}.{r.randint(0, 99):02d} EUR",
            "P5": f"{classes[0]} : Order {r.randint(10**5, 10**7)} shipped via {r.choice(['DHL', 'UPS', 'FedEx', 'PostNL'])} tracking {r.randint(10**9, 10**11)}",
            "P6": f"{classes[3]} : Payment gateway returned status {r.choice([500, 502, 503, 504])} after {r.randint(100, 30000)} ms",
            "P7": f"{classes[1]} : Cache refresh finished: {r.randint(0, 5000)} entries in {r.randint(1, 9000)} ms",
            "P8": f"{classes[1]} : Login attempt {r.randint(2, 10)} failed for user {r.choice(['alice', 'bob', 'mallory'])}",
            "P9": f"{classes[0]} : Inventory reserved for order {r.randint(10**5, 10**7)}: {','.join(str(r.randint(100, 999)) for _ in range(3))}",
            "P10": f"{classes[3]} : Request to https://pay.example.com/v2/charges/{r.randint(10**5, 10**7)} failed: {'x' * r.randint(40, 80)}",
        }[e]
        text = f"{app_ts} {lvl} 1 --- {thread} {msg}"
        stream = "stderr" if e in ("P6", "P10") else "stdout"
        if len(text) > 120 or r.random() < 0.05:
            # containerd splits long lines: a P part, then the F rest.
            cut = r.randint(30, len(text) - 10)
            rows.append((e, f"{ts} {stream} P {text[:cut]}"))
            rows.append((e, f"{ts} {stream} F {text[cut:]}"))
        else:
            rows.append((e, f"{ts} {stream} F {text}"))
    return rows


for name, gen in [("hdfs", hdfs), ("nginx", nginx), ("kubelet", kubelet), ("app_json", appjson), ("sshd", syslog), ("spring_cri", spring_cri)]:
    write(name, gen())
