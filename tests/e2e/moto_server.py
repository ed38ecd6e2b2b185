"""A local AWS KMS (moto's server mode) for the field-encryption tests.

Custos's AWS KMS backend is exercised against `python -m moto.server` on a
loopback port. Tests stop the server to simulate a KMS outage and start it
again on the same port. moto keeps its state in memory only, so keys created
before stop() are gone after start(); to keep keys across an "outage", use
pause()/resume() instead (SIGSTOP/SIGCONT: calls hang until Custos's KMS
timeout fires, as they would against an unreachable region, and the keys
survive).

Install with `pip install -r tests/requirements.txt` (moto[server]).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

HOST = "127.0.0.1"
REGION = "us-east-1"
# moto accepts any credentials; these keep boto3 and the Rust SDK from
# searching the machine for real ones.
DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
}
INSTALL_HINT = "moto[server] is not installed: run `pip install -r tests/requirements.txt`"


def free_port(host: str = HOST) -> int:
    """A port nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class MotoServer:
    """One moto server process; every wait is bounded."""

    def __init__(self, log_path: Path | str, port: Optional[int] = None,
                 host: str = HOST, region: str = REGION):
        self.host = host
        self.port = port or free_port(host)
        self.region = region
        self.log_path = Path(log_path)
        self.proc: Optional[subprocess.Popen] = None
        self.paused = False

    @property
    def endpoint(self) -> str:
        """The URL to give an AWS client as its endpoint override."""
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict:
        """Environment for a process that should use this server (e.g. Custos)."""
        return dict(DUMMY_CREDENTIALS, AWS_ENDPOINT_URL=self.endpoint, AWS_REGION=self.region)

    def custos_kms_yaml(self) -> str:
        """The `kms:` entry of a Custos `encryption:` section (two-space
        indent inside it) that uses this server, with the credentials from
        the variables `env()` sets."""
        return ("  kms:\n"
                "    aws:\n"
                f"      region: {self.region}\n"
                f"      endpoint: \"{self.endpoint}\"\n"
                "      access_key_id_env: AWS_ACCESS_KEY_ID\n"
                "      secret_access_key_env: AWS_SECRET_ACCESS_KEY\n")

    # -- lifecycle --------------------------------------------------------

    def start(self, timeout: float = 30.0) -> "MotoServer":
        """Starts moto (again, on the same port) and waits until KMS answers."""
        if self.running():
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        env = dict(os.environ, **DUMMY_CREDENTIALS)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True)
        log.close()
        self.paused = False
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = self._log_tail()
                if "No module named" in text and "moto" in text:
                    raise RuntimeError(f"{INSTALL_HINT}\n{text}")
                raise RuntimeError(f"moto exited with {self.proc.returncode}:\n{text}")
            try:
                self.client(connect_timeout=1, read_timeout=2).list_keys(Limit=1)
                return self
            except Exception as e:  # not listening yet
                last_error = e
                time.sleep(0.2)
        self.stop()
        raise AssertionError(f"moto did not answer on {self.endpoint} within {timeout:.0f}s "
                             f"({last_error}):\n{self._log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stops moto (its keys are lost); the port is free again afterwards."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        if self.paused:
            os.kill(proc.pid, signal.SIGCONT)  # a stopped process ignores SIGTERM until resumed
            self.paused = False
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    def pause(self) -> None:
        """Freezes moto: connections are accepted by the kernel but never answered."""
        if not self.running():
            raise RuntimeError("moto is not running")
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """Unfreezes moto after pause(); its keys are intact."""
        if self.proc is not None and self.paused:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.paused = False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> "MotoServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- KMS --------------------------------------------------------------

    def client(self, connect_timeout: float = 5, read_timeout: float = 10):
        """A boto3 KMS client for this server (boto3 comes with moto)."""
        import boto3
        from botocore.config import Config
        return boto3.client(
            "kms", region_name=self.region, endpoint_url=self.endpoint,
            aws_access_key_id="testing", aws_secret_access_key="testing",
            config=Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                          retries={"max_attempts": 1}))

    def create_key(self, alias: Optional[str] = None, description: str = "custos test KEK") -> str:
        """Creates a symmetric ENCRYPT_DECRYPT key; returns its ARN.

        alias, if given, is created as `alias/<alias>` (a leading `alias/` is kept).
        """
        kms = self.client()
        arn = kms.create_key(Description=description, KeyUsage="ENCRYPT_DECRYPT",
                             KeySpec="SYMMETRIC_DEFAULT")["KeyMetadata"]["Arn"]
        if alias:
            name = alias if alias.startswith("alias/") else f"alias/{alias}"
            kms.create_alias(AliasName=name, TargetKeyId=arn)
        return arn

    def _log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


if __name__ == "__main__":
    # Smoke test: start, make a key, stop, restart on the same port.
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        m = MotoServer(Path(d) / "moto.log").start()
        arn = m.create_key(alias="custos-smoke")
        out = m.client().generate_data_key(KeyId="alias/custos-smoke", KeySpec="AES_256",
                                           EncryptionContext={"topic": "t"})
        assert out["KeyId"] == arn and len(out["Plaintext"]) == 32
        m.pause()
        m.resume()
        assert m.client().describe_key(KeyId=arn)["KeyMetadata"]["Arn"] == arn
        port = m.port
        m.stop()
        m.start()
        assert m.port == port and m.client().list_keys()["Keys"] == []
        m.stop()
        print("ok", arn)
