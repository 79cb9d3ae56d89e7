"""deploy/nginx.conf in a real nginx in front of a real `granary server`: HTTPS in, the API and dashboard out;
and the server terminating TLS itself."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from granary.config import Settings
from tests.integration.api.seed import seed
from tests.integration.api.server_proc import free_port, running_server

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_nginx_reverse_proxy(tmp_path: Path) -> None:
    if not Path(NGINX).exists():
        pytest.skip("no nginx: apt-get install nginx (.ci/run does)")
    settings = Settings.from_env(environ={}, home=tmp_path / "g")
    seeded = seed(settings)
    cert, key = self_signed(tmp_path)
    with running_server(settings, auth="tokens", log=tmp_path / "server.log") as url:
        upstream = url.removeprefix("http://")
        https_port = free_port()
        site = (ROOT / "deploy" / "nginx.conf").read_text()
        site = (site.replace("127.0.0.1:8470", upstream).replace("listen 443", f"listen 127.0.0.1:{https_port}")
                .replace("/etc/granary/tls/cert.pem", str(cert)).replace("/etc/granary/tls/key.pem", str(key)))
        prefix = tmp_path / "nginx"
        for sub in ("logs", "tmp"):
            (prefix / sub).mkdir(parents=True)
        user = "user root;\n" if os.geteuid() == 0 else ""
        (prefix / "nginx.conf").write_text(
            f"{user}worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/logs/error.log;\n"
            "events { worker_connections 64; }\n"
            f"http {{\n access_log {prefix}/logs/access.log;\n client_body_temp_path {prefix}/tmp;\n"
            f" proxy_temp_path {prefix}/tmp;\n fastcgi_temp_path {prefix}/tmp;\n uwsgi_temp_path {prefix}/tmp;\n"
            f" scgi_temp_path {prefix}/tmp;\n{site}\n}}\n")
        check = subprocess.run([NGINX, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
                                stderr=subprocess.PIPE)
        try:
            base = f"https://127.0.0.1:{https_port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    r = httpx.get(f"{base}/api/v1/health", verify=False, timeout=5)
                    break
                except httpx.TransportError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(f"nginx did not answer: {proc.stderr.read() if proc.stderr else ''}"
                                             ) from None
                    time.sleep(0.2)
            assert r.status_code == 200 and r.json()["auth"] == "tokens"
            h = {"Authorization": f"Bearer {seeded.tokens_by_role['reader']}"}
            names = [d["name"] for d in httpx.get(f"{base}/api/v1/datasets", headers=h, verify=False).json()["items"]]
            assert names == ["corpus-tok", "web", "web-clean", "web-tok"]
            ui = httpx.get(f"{base}/ui/", verify=False)
            assert ui.status_code == 200 and ui.headers["x-content-type-options"] == "nosniff"
            assert httpx.get(f"{base}/api/v1/datasets", verify=False).status_code == 401
        finally:
            proc.terminate()
            proc.wait(30)


def test_server_serves_https_itself(tmp_path: Path) -> None:
    settings = Settings.from_env(environ={}, home=tmp_path / "g")
    seeded = seed(settings)
    cert, key = self_signed(tmp_path)
    with running_server(settings, auth="tokens", log=tmp_path / "server.log", tls=(cert, key)) as url:
        assert url.startswith("https://")
        h = {"Authorization": f"Bearer {seeded.tokens_by_role['reader']}"}
        r = httpx.get(f"{url}/api/v1/whoami", headers=h, verify=ssl.create_default_context(cafile=str(cert)))
        assert r.status_code == 200 and r.json()["name"] == "rita"
        with pytest.raises(httpx.TransportError):
            httpx.get(url.replace("https://", "http://") + "/api/v1/health", timeout=10)
