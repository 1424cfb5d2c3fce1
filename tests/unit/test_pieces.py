"""Unit tests of small pieces: ids, retry backoff, schedules, image acceptance, wake-ups."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from modal_proto import api_pb2

from homeport import ids
from homeport.server.notify import Notifier
from homeport.server.services.calls import retry_delay_s
from homeport.server.services.functions import next_schedule_time
from homeport.tls import CertificateAuthority


def test_ids_have_the_shapes_the_client_checks() -> None:
    assert re.fullmatch(r"ap-[a-zA-Z0-9]{22}", ids.new_id("app"))
    assert re.fullmatch(r"ta-[0-9A-Z]{26}", ids.new_id("task"))
    assert ids.new_id("function").count("-") == 1


def test_only_sandbox_task_ids_end_in_v() -> None:
    """Client 1.6.4 sends `modal container exec` the V2-sandbox way for a task id ending
    in "V"; a function container's must never look like one."""
    assert not any(ids.new_id("task").endswith("V") for _ in range(5000))
    assert all(ids.is_id("task", ids.new_id("task")) for _ in range(100))
    assert ids.new_sandbox_task_id().endswith("V")


def test_retry_delay_grows_by_the_coefficient_up_to_the_maximum() -> None:
    policy = api_pb2.FunctionRetryPolicy(
        retries=5, initial_delay_ms=1000, backoff_coefficient=2.0, max_delay_ms=5000
    )
    assert [retry_delay_s(policy, n) for n in range(1, 5)] == [1.0, 2.0, 4.0, 5.0]


def test_period_schedule_adds_its_length() -> None:
    schedule = api_pb2.Schedule(period=api_pb2.Schedule.Period(minutes=1, seconds=30))
    assert next_schedule_time(schedule, 1000.0) == 1090.0


def test_cron_schedule_fires_at_the_next_matching_minute() -> None:
    schedule = api_pb2.Schedule(cron=api_pb2.Schedule.Cron(cron_string="*/15 * * * *", timezone="UTC"))
    after = datetime(2026, 1, 1, 10, 7, tzinfo=UTC).timestamp()
    assert next_schedule_time(schedule, after) == datetime(2026, 1, 1, 10, 15, tzinfo=UTC).timestamp()


def test_a_listener_sees_a_notification_sent_before_it_waits() -> None:
    async def scenario() -> bool:
        notifier = Notifier()
        with notifier.listen("k") as listener:
            notifier.notify("k")
            return await listener.wait(0.01)

    assert asyncio.run(scenario())


def test_a_listener_times_out_without_notification() -> None:
    async def scenario() -> bool:
        with Notifier().listen("k") as listener:
            return await listener.wait(0.01)

    assert not asyncio.run(scenario())


def test_web_urls_follow_the_configured_domain_scheme_and_port() -> None:
    from pathlib import Path

    from homeport.config import Settings
    from homeport.server.services.web import host_label

    label = host_label("main", "My App", "Model.predict", "")
    assert label == "main--my-app-model-predict"
    assert (
        Settings(data_dir=Path("/x"), port=7480).web_url(label)
        == "http://main--my-app-model-predict.localhost:7481"
    )
    production = Settings(data_dir=Path("/x"), web_domain="apps.example.com", web_scheme="https", web_port=0)
    assert production.web_url("main--api") == "https://main--api.apps.example.com"
    assert host_label("main", "app", "f", "custom-label", "dev") == "main--custom-label-dev"


def test_gpu_pool_assigns_whole_devices_exclusively() -> None:
    from homeport.agent.gpus import GpuPool, GpuRequest, model_name

    pool = GpuPool(["T4", "A100-80GB", "A100-80GB"])
    assert pool.can_ever_satisfy(GpuRequest("A100-80GB", 2))
    assert not pool.can_ever_satisfy(GpuRequest("H100", 1))
    assert pool.acquire("ta-1", GpuRequest("A100-80GB", 2)) == [1, 2]
    assert pool.acquire("ta-2", GpuRequest("A100-80GB", 1)) is None  # busy, not impossible
    assert pool.acquire("ta-2", GpuRequest("ANY", 1)) == [0]
    pool.release("ta-1")
    assert pool.acquire("ta-3", GpuRequest("A100-80GB", 1)) == [1]
    assert pool.describe() == "1 x T4, 2 x A100-80GB"
    assert (
        model_name("NVIDIA A100-SXM4-80GB") == "A100-80GB" and model_name("NVIDIA H100 80GB HBM3") == "H100"
    )


def test_gpu_containers_get_the_hosts_driver_libraries() -> None:
    from homeport.agent.gpus import driver_files_from

    listing = (
        "\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1\n"
        "\tlibnvidia-ml.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1\n"
        "\tlibcuda.so.1 (libc6) => /usr/lib/i386-linux-gnu/libcuda.so.1\n"
        "\tlibc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6\n"
    )
    assert driver_files_from(listing) == [
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
    ]


def test_a_ca_made_again_reissues_its_server_certificates(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A certificate signed by a CA key that is gone (the CA was made again) is not served:
    the new CA must verify what the server presents."""
    CertificateAuthority(tmp_path).server_context(["127.0.0.1"])
    (tmp_path / "ca.pem").unlink()
    (tmp_path / "ca.key").unlink()
    CertificateAuthority(tmp_path).server_context(["127.0.0.1"])
    served = x509.load_pem_x509_certificate(next(tmp_path.glob("server-*.pem")).read_bytes())
    authority = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes()).public_key()
    assert isinstance(authority, ec.EllipticCurvePublicKey)
    authority.verify(served.signature, served.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
