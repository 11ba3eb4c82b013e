"""Shards in object storage, without the internet: a local S3-compatible server (moto's server mode, from the
package registry) started by the test, over HTTPS with a certificate made here (LitData's uploads go through
obstore, which refuses plain-HTTP endpoints). `vlmlab-data optimize` writes to an s3:// URL, a second run finds it
up to date there, and a data module with `data.shards=s3://...` trains on it through a loader worker (chunks
downloaded into the configured cache)."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.published_formats import write_vqav2
from tests.test_formats import data_config
from vlmlab.data.datamodule import VLMDataModule
from vlmlab.data.optimize import optimize_split
from vlmlab.models.builder import build_vlm
from vlmlab.testing import free_port


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert, key_file = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert, key_file


@pytest.fixture
def s3_bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A bucket on a local moto S3 server, with the AWS_* settings that boto3, LitData and obstore read."""
    cert, key = self_signed_certificate(tmp_path)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port), "-c", str(cert), "-k", str(key)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    settings = {
        "AWS_ENDPOINT_URL": f"https://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CA_BUNDLE": str(cert),  # boto3
        "SSL_CERT_FILE": str(cert),  # obstore (rustls with the system's roots)
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    try:
        for _ in range(300):
            try:
                boto3.client("s3").create_bucket(Bucket="shards")
                break
            except Exception:  # the server is still starting
                time.sleep(0.1)
        else:
            pytest.fail("the local S3 server did not start")
        yield "s3://shards/vqa"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_optimize_to_s3_then_train_from_it(tmp_path: Path, s3_bucket: str) -> None:
    write_vqav2(tmp_path, "train2014", num_questions=6)
    cfg = data_config(tmp_path, "vqav2")
    model = build_vlm(cfg.model)
    files = VLMDataModule.from_config(cfg.data, model, cfg.seed)
    first = optimize_split(files, "vqav2", "train", s3_bucket, {}, chunk_bytes="1KB")
    again = optimize_split(files, "vqav2", "train", s3_bucket, {}, chunk_bytes="1KB")
    assert (first.up_to_date, again.up_to_date, again.kept) == (False, True, 6)
    listed = boto3.client("s3").list_objects_v2(Bucket="shards", Prefix="vqa/vqav2/train/")["Contents"]
    names = {item["Key"].rsplit("/", 1)[1] for item in listed}
    assert {"index.json", "lengths.npz", "vlmlab.json"} <= names and sum(n.endswith(".bin") for n in names) > 1

    streamed = data_config(
        tmp_path, "vqav2", f"data.shards={s3_bucket}", "data.num_workers=1", f"data.streaming.cache_dir={tmp_path}/c"
    )
    shards = VLMDataModule.from_config(streamed.data, model, cfg.seed, {"vqav2": 1.0}, 3)
    ids = [i for batch in shards.train_dataloader() for i in batch["ids"]]
    assert sorted(ids) == list(range(500, 506))
    expected, got = files.dataset("vqav2", "train")[4], shards.dataset("vqav2", "train")[4]
    assert torch.equal(expected["pixel_values"], got["pixel_values"])
    assert torch.equal(expected["input_ids"], got["input_ids"])
    assert any((tmp_path / "c").rglob("*.bin"))  # downloaded chunks, in the configured cache
