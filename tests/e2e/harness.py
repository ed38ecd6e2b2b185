"""Helpers for the end-to-end tests: a real Kafka started by deploy/kafka.sh,
Custos started as a process, the Java test client, and librdkafka
(confluent-kafka) producers and consumers. Every wait is bounded."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from records import (Rec, rec_from_json, rec_from_rdkafka, record_headers,
                     record_key, record_value)

REPO = Path(__file__).resolve().parents[2]
KAFKA_SH = str(REPO / "deploy" / "kafka.sh")
DIRECT = os.environ.get("CUSTOS_E2E_DIRECT", "") not in ("", "0", "false", "no")
HOST = "127.0.0.1"


def wait_until(cond: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    """Poll cond() until it returns something truthy; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def tail(path, lines: int = 60) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            data = f.read().decode("utf-8", "replace")
        data = re.sub(r"\x1b\[[0-9;]*m", "", data)   # ANSI colours
        return "\n".join(data.splitlines()[-lines:])
    except OSError:
        return ""


# ------------------------------------------------------------------ TLS

class Sec:
    """How a client secures its connection: TLS trust (CA PEM) and optionally a
    client certificate. Sec() is plaintext."""

    def __init__(self, ca=None, cert=None, key=None, keystore=None, sasl=None):
        """`sasl` is (mechanism, username, password) for SASL to Custos."""
        self.ca, self.cert, self.key, self.keystore = ca, cert, key, keystore
        self.sasl = sasl

    @property
    def tls(self) -> bool:
        return self.ca is not None

    @property
    def protocol(self) -> str:
        if self.sasl:
            return "SASL_SSL" if self.tls else "SASL_PLAINTEXT"
        return "SSL" if self.tls else "PLAINTEXT"

    def rd(self) -> dict:
        conf = {}
        if self.tls:
            conf = {"ssl.ca.location": str(self.ca)}
            if self.cert:
                conf.update({"ssl.certificate.location": str(self.cert), "ssl.key.location": str(self.key)})
        if self.sasl:
            mech, user, pw = self.sasl
            conf.update({"sasl.mechanism": mech, "sasl.username": user, "sasl.password": pw})
        if conf:
            conf["security.protocol"] = self.protocol
        return conf

    def java(self) -> list:
        """--property arguments for the Java client."""
        if not self.tls and not self.sasl:
            return []
        props = [f"security.protocol={self.protocol}"]
        if self.tls:
            props += ["ssl.truststore.type=PEM", f"ssl.truststore.location={self.ca}"]
        if self.keystore:
            props += ["ssl.keystore.type=PEM", f"ssl.keystore.location={self.keystore}"]
        if self.sasl:
            mech, user, pw = self.sasl
            module = ("org.apache.kafka.common.security.plain.PlainLoginModule" if mech == "PLAIN"
                      else "org.apache.kafka.common.security.scram.ScramLoginModule")
            props += [f"sasl.mechanism={mech}",
                      f'sasl.jaas.config={module} required username="{user}" password="{pw}";']
        out = []
        for p in props:
            out += ["--property", p]
        return out


PLAIN = Sec()


def make_pki(d: Path, name: str) -> dict:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate
    (PEM, RSA 2048) made with openssl. Returns a dict of paths."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)

    def run(*args):
        r = subprocess.run(["openssl", *args], cwd=d, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"openssl {args[0]} failed: {r.stderr}"
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365", "-subj", f"/CN={name}-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for who, cn in (("server", "localhost"), ("client", f"{name}-client")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{who}.key",
            "-out", f"{who}.csr")
        run("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "365", "-extfile", f"{who}.ext", "-out", f"{who}.pem")
    (d / "client-keystore.pem").write_text((d / "client.key").read_text() + (d / "client.pem").read_text())
    return {k: d / f for k, f in (("ca", "ca.pem"), ("cert", "server.pem"), ("key", "server.key"),
                                  ("client_cert", "client.pem"), ("client_key", "client.key"),
                                  ("client_keystore", "client-keystore.pem"))}


# ------------------------------------------------------------------ Kafka

class KafkaCluster:
    """A real Kafka run by deploy/kafka.sh in its own run dir."""

    def __init__(self, run_dir: Path, brokers: int, port_base: int, tls: bool = False,
                 sasl: bool = False, acl: bool = False):
        """acl=True (implies sasl): Kafka's own authorizer with the test users of
        deploy/kafka.sh --acl; clients whose rights matter use the SASL listener."""
        self.run_dir = Path(run_dir)
        self.brokers = brokers
        self.port_base = port_base
        self.tls = tls
        self.sasl = sasl or acl
        self.acl = acl

    def client_port(self, node_id: int) -> int:
        return self.port_base + node_id - 1

    def sasl_port(self, node_id: int) -> int:
        """The SASL_PLAINTEXT listener (started with sasl=True; SCRAM-SHA-512 user
        custos / custos-test-secret, see deploy/kafka.sh)."""
        return self.port_base + 300 + node_id - 1

    def ssl_port(self, node_id: int) -> int:
        """The SSL listener (started with tls=True); certificates in tls_dir."""
        return self.port_base + 200 + node_id - 1

    @property
    def tls_dir(self) -> Path:
        return self.run_dir / "tls"

    def client_sec(self) -> Sec:
        """What a client needs for the SSL listener (trust + client certificate)."""
        t = self.tls_dir
        return Sec(ca=t / "ca.pem", cert=t / "client.pem", key=t / "client.key",
                   keystore=t / "client-keystore.pem")

    @property
    def ssl_bootstrap(self) -> str:
        return ",".join(f"{HOST}:{self.ssl_port(n)}" for n in range(1, self.brokers + 1))

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{HOST}:{self.client_port(n)}" for n in range(1, self.brokers + 1))

    def _sh(self, *args, timeout=180):
        r = subprocess.run([KAFKA_SH, *args, "--dir", str(self.run_dir)], capture_output=True,
                           text=True, timeout=timeout)
        if r.returncode != 0:
            raise AssertionError(f"deploy/kafka.sh {' '.join(args)} failed ({r.returncode}):\n"
                                 f"{r.stdout}\n{r.stderr}\n--- server.log ---\n"
                                 + "\n".join(tail(self.run_dir / f"node-{n}" / "server.log", 30)
                                             for n in range(1, self.brokers + 1)))
        return r.stdout

    def start(self):
        for n in range(1, self.brokers + 1):
            for port in ((self.client_port(n), self.client_port(n) + 100)
                         + ((self.ssl_port(n),) if self.tls else ())
                         + ((self.sasl_port(n),) if self.sasl else ())):
                if not port_is_free(port):
                    raise AssertionError(f"port {port} is busy; set CUSTOS_E2E_KAFKA_PORT_BASE")
        self._sh("start", "--brokers", str(self.brokers), "--port-base", str(self.port_base),
                 *(["--tls"] if self.tls else []), *(["--sasl"] if self.sasl else []),
                 *(["--acl"] if self.acl else []))
        return self

    def stop(self):
        self._sh("stop", timeout=120)

    def stop_node(self, node_id: int):
        self._sh("stop-node", str(node_id), timeout=120)

    def start_node(self, node_id: int):
        self._sh("start-node", str(node_id))


# ------------------------------------------------------------------ gateways

class DirectGateway:
    """CUSTOS_E2E_DIRECT=1: clients talk to Kafka itself."""
    direct = True

    def __init__(self, kafka: KafkaCluster, tls: bool = False):
        self.kafka = kafka
        self.name = "direct"
        self.use_tls = tls
        # DIRECT with tls: clients use the broker's SSL listener
        self.client_sec = kafka.client_sec() if tls else PLAIN
        self._port = kafka.ssl_port if tls else kafka.client_port

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{HOST}:{self._port(n)}" for n in range(1, self.kafka.brokers + 1))

    @property
    def bootstrap_addr(self):
        return (HOST, self._port(1))

    def broker_addr(self, node_id: int):
        return (HOST, self._port(node_id))

    def alive(self) -> bool:
        return True

    def healthy(self) -> bool:
        return True

    def log_tail(self, lines=80) -> str:
        return ""


class CustosGateway:
    """The custos binary, configured in front of one KafkaCluster."""
    direct = False

    def __init__(self, binary: str, kafka: KafkaCluster, workdir: Path, port_block: int,
                 name: str = "custos", max_frame_bytes: int = 104857600, extra_yaml: str = "",
                 listen_tls: Optional[dict] = None, upstream_tls: Optional[dict] = None,
                 client_sec: Optional[Sec] = None, listen_extra: str = "",
                 upstream_sasl: Optional[dict] = None, admin_extra: str = "",
                 limits_extra: str = ""):
        self.binary = binary
        self.kafka = kafka
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.host = HOST
        self.advertised_host = HOST
        self.bootstrap_port = port_block
        self.admin_port = port_block + 5
        self.broker_port_base = port_block + 10
        self.max_frame_bytes = max_frame_bytes
        self.extra_yaml = extra_yaml
        self.listen_extra = listen_extra
        self.upstream_sasl = upstream_sasl
        self.admin_extra = admin_extra   # more `admin:` keys, each line indented two spaces
        self.limits_extra = limits_extra  # more `limits:` keys, likewise
        self.listen_tls = listen_tls
        self.upstream_tls = upstream_tls
        self.client_sec = client_sec or PLAIN
        self.config_path = self.workdir / "custos.yaml"
        self.log_path = self.workdir / "custos.log"
        self.proc: Optional[subprocess.Popen] = None

    @property
    def bootstrap(self) -> str:
        return f"{self.advertised_host}:{self.bootstrap_port}"

    @property
    def bootstrap_addr(self):
        return (self.advertised_host, self.bootstrap_port)

    def broker_addr(self, node_id: int):
        return (self.advertised_host, self.broker_port_base + node_id)

    def ports(self):
        return [self.bootstrap_port, self.admin_port] + [
            self.broker_port_base + n for n in range(1, self.kafka.brokers + 1)]

    @staticmethod
    def _yaml_map(d: dict, indent: int) -> str:
        out = ""
        for k, v in d.items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            elif isinstance(v, (str, Path)):
                v = json.dumps(str(v))
            out += " " * indent + f"{k}: {v}\n"
        return out

    def write_config(self):
        port = self.kafka.ssl_port if self.upstream_tls else self.kafka.client_port
        if self.upstream_sasl:
            port = self.kafka.sasl_port
        upstream = ", ".join(f'"{HOST}:{port(n)}"' for n in range(1, self.kafka.brokers + 1))
        listen_tls = ("  tls:\n" + self._yaml_map(self.listen_tls, 4)) if self.listen_tls else ""
        upstream_tls = ("  tls:\n" + self._yaml_map(self.upstream_tls, 4)) if self.upstream_tls else ""
        if self.upstream_sasl:
            upstream_tls += "  sasl:\n" + self._yaml_map(self.upstream_sasl, 4)
        self.config_path.write_text(
            "# generated by tests/e2e\n"
            "listen:\n"
            f"  host: {self.host}\n"
            f"  advertised_host: {self.advertised_host}\n"
            f"  bootstrap_port: {self.bootstrap_port}\n"
            f"  broker_port_base: {self.broker_port_base}\n"
            + listen_tls + self.listen_extra +
            "upstream:\n"
            f"  bootstrap_servers: [{upstream}]\n"
            + upstream_tls +
            "limits:\n"
            f"  max_frame_bytes: {self.max_frame_bytes}\n"
            + self.limits_extra +
            "admin:\n"
            f"  listen: {self.host}:{self.admin_port}\n"
            + self.admin_extra + self.extra_yaml)

    def http_status(self, path: str, timeout: float = 2.0) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.admin_port}{path}", timeout=timeout) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (OSError, ValueError):
            return -1

    def start(self, ready_timeout: float = 30.0):
        if not os.path.isfile(self.binary) or not os.access(self.binary, os.X_OK):
            raise AssertionError(f"custos binary {self.binary} not found: build it (cargo build) or set "
                                 "CUSTOS_BIN, or run with CUSTOS_E2E_DIRECT=1 to test Kafka directly")
        self.write_config()
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.binary, "run", "--config", str(self.config_path)],
                                     stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                     cwd=str(self.workdir), env=env, start_new_session=True)
        logf.close()
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"custos exited with {self.proc.returncode} during start-up; log:\n"
                                     + self.log_tail())
            if self.http_status("/readyz") == 200:
                return self
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"custos /readyz not 200 within {ready_timeout}s; log:\n" + self.log_tail())
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        return self.alive() and self.http_status("/healthz") == 200

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait; returns the exit code (kills and raises if it hangs)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"custos did not exit within {timeout}s of SIGTERM; log:\n" + self.log_tail())

    def log_tail(self, lines: int = 80) -> str:
        return tail(self.log_path, lines)


# ------------------------------------------------------------------ gateway lifecycle

KAFKA_PORT_BASE = int(os.environ.get("CUSTOS_E2E_KAFKA_PORT_BASE", "21092"))
CUSTOS_PORT_BASE = int(os.environ.get("CUSTOS_E2E_PORT_BASE", "31000"))
CUSTOS_BIN = os.environ.get("CUSTOS_BIN", str(REPO / "target" / "debug" / "custos"))

ACTIVE_GATEWAYS = []          # gateways whose log tail is attached to failing tests
_next_block = [CUSTOS_PORT_BASE]


def _port_block(nbrokers: int) -> int:
    for _ in range(200):
        base = _next_block[0]
        _next_block[0] += 20
        ports = [base, base + 5] + [base + 10 + n for n in range(1, nbrokers + 1)]
        if all(port_is_free(p) for p in ports):
            return base
    raise RuntimeError("no free port block for Custos")


def start_gateway(kafka: KafkaCluster, workdir: Path, name: str, direct_tls: bool = False,
                  defer_start: bool = False, **kw):
    """DirectGateway in DIRECT mode (on the broker's SSL listener if direct_tls),
    else a started Custos in front of kafka. With defer_start, the config is
    written but the caller starts it (after preparing files it names)."""
    if DIRECT:
        return DirectGateway(kafka, tls=direct_tls)
    gw = CustosGateway(CUSTOS_BIN, kafka, workdir, _port_block(kafka.brokers), name=name, **kw)
    ACTIVE_GATEWAYS.append(gw)
    if defer_start:
        gw.write_config()
    else:
        gw.start()
    return gw


def add_scram_users(path, users: dict):
    """Adds each {user: password} to a Custos SCRAM credential file with
    `custos users add` (the password through the environment, never argv)."""
    for user, pw in users.items():
        r = subprocess.run([CUSTOS_BIN, "users", "--file", str(path), "add", user, "--password-env", "PW"],
                           env={**os.environ, "PW": pw}, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr


def keys_cli(config_path, *args, check=True):
    """Runs `custos keys --config CONFIG ARGS...`; with check, asserts it succeeded."""
    r = subprocess.run([CUSTOS_BIN, "keys", "--config", str(config_path), *map(str, args)],
                       capture_output=True, text=True, timeout=120)
    if check:
        assert r.returncode == 0, f"custos keys {args}: rc={r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def stop_gateway(gw):
    """Stop Custos with SIGTERM and check it exited cleanly."""
    if gw.direct:
        return
    try:
        rc = gw.stop()
    finally:
        if gw in ACTIVE_GATEWAYS:
            ACTIVE_GATEWAYS.remove(gw)
    assert rc == 0, f"{gw.name} exited with {rc} after SIGTERM; log tail:\n{gw.log_tail(40)}"



def gateway_metrics(gw) -> str:
    """The OpenMetrics text of a Custos gateway's admin endpoint."""
    with urllib.request.urlopen(f"http://{gw.host}:{gw.admin_port}/metrics", timeout=5) as r:
        return r.read().decode()


def metric_sum(text: str, name: str, labels: str = "") -> float:
    """The sum of a metric's samples in OpenMetrics text, only those whose
    labels contain `labels` (e.g. 'api="Fetch"') when given."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            head, _, value = line.rpartition(" ")
            if labels in head:
                total += float(value)
    return total


def tcp_peer_ports(pid: int) -> set:
    """Remote ports of the established TCP connections process `pid` holds
    (its socket inodes matched in /proc/net/tcp{,6}); empty once it exited."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return set()
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f)
                for line in f:
                    cols = line.split()
                    # cols: sl, local, remote, state (01 = ESTABLISHED), ..., inode at 9
                    if cols[3] == "01" and cols[9] in inodes:
                        ports.add(int(cols[2].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return ports


# ------------------------------------------------------------------ Java client

def _java_cmd(args):
    return [KAFKA_SH, "java-client", *[str(a) for a in args]]


def java(*args, timeout: float = 120, check: bool = True):
    """Run the Java test client to completion; returns (exit code, [json objects], stderr)."""
    r = subprocess.run(_java_cmd(args), capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    objs = []
    for line in r.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            objs.append(json.loads(line))
    if check and r.returncode != 0:
        raise AssertionError(f"java-client {' '.join(map(str, args[:1]))} exited {r.returncode}\n"
                             f"args: {args}\nstdout (tail): {r.stdout[-3000:]}\nstderr (tail): {r.stderr[-6000:]}")
    return r.returncode, objs, r.stderr


def java_records(objs) -> list:
    return [rec_from_json(o) for o in objs if o.get("t") == "rec"]


def java_produce(bootstrap, topic, count, *, compression="none", seed=1, size=100,
                 idempotent=False, transactional_id=None, txn_pattern=None, extra=(), timeout=120,
                 sec: Sec = PLAIN):
    """Returns the acknowledged records in send order (each with .txn in the json)."""
    args = ["produce", "--bootstrap", bootstrap, "--topic", topic, "--count", count,
            "--compression", compression, "--seed", seed, "--size", size,
            "--timeout-ms", int(timeout * 1000) - 10000]
    if idempotent:
        args.append("--idempotent")
    if transactional_id:
        args += ["--transactional-id", transactional_id]
    if txn_pattern:
        args += ["--txn-pattern", txn_pattern]
    args += list(extra) + sec.java()
    _, objs, _ = java(*args, timeout=timeout)
    recs = [o for o in objs if o.get("t") == "rec"]
    assert len(recs) == count, f"java produced {len(recs)} of {count}"
    return recs


def java_consume(bootstrap, topic, count, *, group=None, group_protocol="classic",
                 isolation="read_uncommitted", extra_ms=0, timeout=90, check=True, extra=(),
                 sec: Sec = PLAIN):
    args = ["consume", "--bootstrap", bootstrap, "--topic", topic, "--count", count,
            "--isolation", isolation, "--extra-ms", extra_ms, "--group-protocol", group_protocol,
            "--timeout-ms", int(timeout * 1000) - 10000]
    if group:
        args += ["--group", group]
    args += list(extra) + sec.java()
    rc, objs, err = java(*args, timeout=timeout, check=check)
    return java_records(objs)


class JavaProc:
    """A Java client running in the background; stdout JSON lines are collected as they come."""

    def __init__(self, *args, timeout: float = 180):
        self.args = [str(a) for a in args]
        self.timeout = timeout
        self.proc = subprocess.Popen(_java_cmd(self.args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self.objs = []
        self.lock = threading.Lock()
        self.stderr_lines = []
        self._t_out = threading.Thread(target=self._read_out, daemon=True)
        self._t_err = threading.Thread(target=self._read_err, daemon=True)
        self._t_out.start()
        self._t_err.start()

    def _read_out(self):
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                try:
                    o = json.loads(line)
                except ValueError:
                    continue
                with self.lock:
                    self.objs.append(o)

    def _read_err(self):
        for line in self.proc.stderr:
            with self.lock:
                self.stderr_lines.append(line.rstrip())
                del self.stderr_lines[:-400]

    def snapshot(self):
        with self.lock:
            return list(self.objs)

    def records(self):
        return [rec_from_json(o) for o in self.snapshot() if o.get("t") == "rec"]

    def count(self):
        with self.lock:
            return sum(1 for o in self.objs if o.get("t") == "rec")

    def assignment(self):
        """The latest full assignment this member reported (set of partitions), or None."""
        with self.lock:
            for o in reversed(self.objs):
                if o.get("t") == "assignment":
                    return set(o["partitions"])
        return None

    def stderr(self):
        with self.lock:
            return "\n".join(self.stderr_lines[-80:])

    def quit(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def wait(self, timeout: float = 60) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"java-client {self.args[:1]} did not finish within {timeout}s\n{self.stderr()}")
        self._t_out.join(5)
        self._t_err.join(5)
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# ------------------------------------------------------------------ librdkafka

def rd_common(bootstrap: str, sec: Sec = PLAIN) -> dict:
    return {
        "bootstrap.servers": bootstrap,
        "client.id": "custos-e2e-rdkafka",
        "socket.timeout.ms": 15000,
        "reconnect.backoff.max.ms": 1000,
        "topic.metadata.refresh.interval.ms": 10000,
        **sec.rd(),
    }


def rd_admin(bootstrap: str, sec: Sec = PLAIN):
    from confluent_kafka.admin import AdminClient
    return AdminClient(rd_common(bootstrap, sec))


def rd_create_topic(bootstrap: str, topic: str, partitions: int, rf: int = 1, timeout: float = 30,
                    config: Optional[dict] = None, sec: Sec = PLAIN):
    from confluent_kafka.admin import NewTopic
    a = rd_admin(bootstrap, sec)
    fs = a.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=rf,
                                   config=config or {})], operation_timeout=timeout, request_timeout=timeout)
    fs[topic].result(timeout)
    # wait until the topic's partitions all have leaders in metadata
    def ready():
        md = a.list_topics(topic, timeout=5)
        t = md.topics.get(topic)
        return (t is not None and t.error is None and len(t.partitions) == partitions
                and all(p.leader >= 0 for p in t.partitions.values()))
    wait_until(ready, timeout, f"topic {topic} to have leaders")


class RdProducer:
    """A librdkafka producer that records every delivery report."""

    def __init__(self, bootstrap: str, *, compression="none", idempotent=False, transactional_id=None,
                 extra: Optional[dict] = None, sec: Sec = PLAIN):
        from confluent_kafka import Producer
        conf = rd_common(bootstrap, sec)
        conf.update({
            "compression.type": compression,
            "enable.idempotence": bool(idempotent or transactional_id),
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": 60000,
        })
        if transactional_id:
            conf["transactional.id"] = transactional_id
            conf["transaction.timeout.ms"] = 60000
        conf.update(extra or {})
        self.p = Producer(conf)
        self.acked = {}    # index -> Rec
        self.failed = {}   # index -> error
        self.txn = {}      # index -> "commit" | "abort"
        self.lock = threading.Lock()

    def _cb(self, i, headers):
        def cb(err, msg):
            with self.lock:
                if err is not None:
                    self.failed[i] = err
                else:
                    # librdkafka's delivery report does not carry the headers: use what was sent
                    self.acked[i] = rec_from_rdkafka(msg)._replace(h=tuple(headers))
        return cb

    def send(self, topic, i, key, value, headers, partition=None):
        kw = {"key": key, "value": value, "headers": headers, "on_delivery": self._cb(i, headers)}
        if partition is not None:
            kw["partition"] = partition
        deadline = time.monotonic() + 30
        while True:
            try:
                self.p.produce(topic, **kw)
                break
            except BufferError:
                if time.monotonic() > deadline:
                    raise
                self.p.poll(0.05)
        self.p.poll(0)

    def flush(self, timeout=60):
        left = self.p.flush(timeout)
        assert left == 0, f"librdkafka: {left} message(s) still undelivered after {timeout}s"

    def acked_in_order(self, n=None):
        with self.lock:
            idx = sorted(self.acked)
            return [self.acked[i] for i in idx]


def rd_produce(bootstrap, topic, count, *, compression="none", seed=1, size=100, idempotent=False,
               transactional_id=None, txn_pattern=None, timeout=60, sec: Sec = PLAIN):
    """Produce the deterministic records; returns acked Recs in send order, and for
    transactions also the outcome of each ("commit"/"abort") in the same order."""
    prod = RdProducer(bootstrap, compression=compression, idempotent=idempotent,
                      transactional_id=transactional_id, sec=sec)
    # Learn the topic's partitions before the first send: messages produced
    # while librdkafka does not know them wait in its unassigned queue, and
    # without idempotence they can land after later ones (a send-order check
    # then fails although every hop kept order).
    prod.p.list_topics(topic, timeout=10)
    outcomes = {}
    if transactional_id:
        prod.p.init_transactions(timeout)
        pattern = (txn_pattern or "commit").split(",")
        for c, outcome in enumerate(pattern):
            lo, hi = count * c // len(pattern), count * (c + 1) // len(pattern)
            prod.p.begin_transaction()
            for i in range(lo, hi):
                outcomes[i] = outcome
                prod.send(topic, i, record_key(seed, i), record_value(seed, i, size), record_headers(seed, i))
            prod.flush(timeout)
            if outcome == "abort":
                prod.p.abort_transaction(timeout)
            else:
                prod.p.commit_transaction(timeout)
    else:
        for i in range(count):
            prod.send(topic, i, record_key(seed, i), record_value(seed, i, size), record_headers(seed, i))
        prod.flush(timeout)
    assert not prod.failed, f"librdkafka delivery failures: {list(prod.failed.items())[:5]}"
    assert len(prod.acked) == count, f"librdkafka acked {len(prod.acked)} of {count}"
    recs = [prod.acked[i] for i in range(count)]
    if transactional_id:
        return recs, [outcomes[i] for i in range(count)]
    return recs


def rd_consumer(bootstrap, group="custos-e2e-nogroup", extra: Optional[dict] = None, sec: Sec = PLAIN):
    from confluent_kafka import Consumer
    conf = rd_common(bootstrap, sec)
    conf.update({
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
    })
    conf.update(extra or {})
    return Consumer(conf)


def rd_consume(bootstrap, topic, count, *, isolation="read_uncommitted", extra_s=0.0, timeout=60,
               check=True, sec: Sec = PLAIN):
    """Assign every partition from the beginning (no group), read `count` records,
    keep reading `extra_s` more seconds to catch extras; returns Recs in delivery order."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition
    c = rd_consumer(bootstrap, extra={"isolation.level": isolation}, sec=sec)
    try:
        deadline = time.monotonic() + timeout

        def parts():
            md = c.list_topics(topic, timeout=5)
            t = md.topics.get(topic)
            if t is None or t.error is not None or not t.partitions:
                return None
            return sorted(t.partitions)
        ps = wait_until(parts, timeout, f"metadata for {topic}")
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ps])
        out = []
        extra_until = None
        while time.monotonic() < deadline:
            if len(out) >= count:
                if extra_until is None:
                    extra_until = time.monotonic() + extra_s
                if time.monotonic() >= extra_until:
                    break
            for m in c.consume(500, 0.2):
                if m.error():
                    raise AssertionError(f"librdkafka consume error: {m.error()}")
                out.append(rec_from_rdkafka(m))
        if check:
            assert len(out) >= count, f"librdkafka consumed {len(out)} of {count} records from {topic} in {timeout}s"
        return out
    finally:
        c.close()


class RdGroupMember:
    """A librdkafka consumer-group member in its own thread: commits synchronously
    after every batch, then reports the batch (so a reported record is committed)."""

    def __init__(self, bootstrap, topic, group, protocol="classic", name="m"):
        extra = {"group.protocol": protocol}
        if protocol == "classic":
            extra.update({"session.timeout.ms": 10000, "heartbeat.interval.ms": 1000,
                          "partition.assignment.strategy": "range"})
        self.c = rd_consumer(bootstrap, group=group, extra=extra)
        self.topic = topic
        self.name = name
        self.records = []
        self.assigned = None
        self.error = None
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.closed = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True, name=f"rdkafka-{name}")
        self.t.start()

    def _run(self):
        from confluent_kafka import TopicPartition
        try:
            self.c.subscribe([self.topic])
            while not self._stop.is_set():
                msgs = self.c.consume(500, 0.2)
                batch = []
                for m in msgs:
                    if m.error():
                        raise RuntimeError(f"consume error: {m.error()}")
                    batch.append(m)
                if batch:
                    offs = {}
                    for m in batch:
                        offs[m.partition()] = m.offset() + 1
                    self.c.commit(offsets=[TopicPartition(self.topic, p, o) for p, o in offs.items()],
                                  asynchronous=False)
                    with self.lock:
                        self.records.extend(rec_from_rdkafka(m) for m in batch)
                with self.lock:
                    self.assigned = {tp.partition for tp in self.c.assignment()}
        except Exception as e:  # reported by the test
            self.error = e
        finally:
            try:
                self.c.close()
            except Exception as e:
                self.error = self.error or e
            self.closed.set()

    def assignment(self):
        with self.lock:
            return None if self.assigned is None else set(self.assigned)

    def count(self):
        with self.lock:
            return len(self.records)

    def snapshot(self):
        with self.lock:
            return list(self.records)

    def stop(self, timeout=30):
        self._stop.set()
        assert self.closed.wait(timeout), f"rdkafka member {self.name} did not close in {timeout}s"
        assert self.error is None, f"rdkafka member {self.name} failed: {self.error!r}"


# ------------------------------------------------------------------ Kafka wire (raw sockets)

def kafka_request(api_key: int, api_version: int, correlation_id: int, body: bytes = b"",
                  client_id: Optional[str] = "custos-e2e-raw", flexible: bool = False) -> bytes:
    """A framed request: length, request header v1 (v2 with an empty tagged-field
    section when flexible) and body."""
    import struct
    hdr = struct.pack(">hhi", api_key, api_version, correlation_id)
    if client_id is None:
        hdr += struct.pack(">h", -1)
    else:
        cid = client_id.encode()
        hdr += struct.pack(">h", len(cid)) + cid
    if flexible:
        hdr += b"\x00"
    payload = hdr + body
    return struct.pack(">i", len(payload)) + payload


def api_versions_v3_request(correlation_id: int) -> bytes:
    def compact_str(s):
        b = s.encode()
        return bytes([len(b) + 1]) + b
    body = compact_str("custos-e2e") + compact_str("1.0") + b"\x00"
    return kafka_request(18, 3, correlation_id, body, flexible=True)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def read_response(sock: socket.socket):
    """Returns (correlation_id, rest of body)."""
    import struct
    (n,) = struct.unpack(">i", recv_exact(sock, 4))
    body = recv_exact(sock, n)
    (cid,) = struct.unpack(">i", body[:4])
    return cid, body[4:]


def wait_closed(sock: socket.socket, timeout: float) -> str:
    """Read until the peer closes the connection. Returns 'eof' or 'reset'; raises
    AssertionError if the connection is still open after timeout seconds."""
    sock.settimeout(0.5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        except OSError as e:
            return f"error {e}"
        if not data:
            return "eof"
    raise AssertionError(f"connection still open {timeout}s after bad input")
