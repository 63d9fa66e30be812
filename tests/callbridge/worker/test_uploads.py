"""``bitrix24.upload_recording``: recordings on the PBX, uploaded outside the portals' lanes.

Each test runs the webhook, the dispatcher and the uploads' worker against the emulated portal
(both databases): which files an enterprise may upload, when, and that an upload in flight
holds up no other call.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from callbridge.crm.bitrix24.rate_limit import RateLimiter, RatePlan
from callbridge.portals import Portals
from callbridge.storage.db import create_engine, create_session_factory
from callbridge.storage.job_queue import JobQueue
from callbridge.storage.models import Enterprise, IntegrationStatus, Job, JobStatus
from callbridge.storage.repositories import EnterpriseRepository
from callbridge.worker.recordings import RecordingRefusedError
from callbridge.worker.uploads import UPLOAD_KIND, RecordingUploader, run_bitrix24
from tests.callbridge.crm.bitrix24.harness import callbridge_settings
from tests.e2e.test_calls_e2e import (
    ENTERPRISE,
    Env,
    environment,
    ev,
    inbound_answered,
    outbound_started,
)

WAV = b"RIFF" + bytes(range(256)) * 8  # 2052 bytes: below the inline limit


INLINE_MAX = 4096


@pytest.fixture
async def monitor(tmp_path: Path) -> Path:
    path = tmp_path / "monitor"
    path.mkdir()
    return path


@pytest.fixture
async def recording_env(
    fresh_database_url: str, tmp_path: Path, monitor: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Env]:
    overrides = {
        "recordings_dirs": [monitor],
        "recording_inline_max_bytes": INLINE_MAX,
        "recording_max_bytes": 1_000_000,
        **getattr(request, "param", {}),
    }
    async with environment(fresh_database_url, tmp_path, settings_overrides=overrides) as built:
        yield built


def attach_job(jobs: list[Job]) -> Job:
    (job,) = [j for j in jobs if j.payload["command"]["kind"] == "attach_record"]
    return job


async def post_recorded_call(env: Env, linkedid: str, path: Path | str) -> None:
    """The PBX reports an answered inbound call, then its recording at ``path``."""
    await env.post(
        *inbound_answered(linkedid), ev("call.recording", linkedid, 5, 60, path=str(path))
    )


async def uploaded(env: Env, linkedid: str, path: Path | str) -> Job:
    """The attach job of a call recorded at ``path``, once every job has run."""
    await post_recorded_call(env, linkedid, path)
    await env.settle()
    return attach_job(await env.jobs())


async def stored_record(env: Env, leg_id: str) -> bytes:
    """The bytes the portal keeps as the recording of a leg."""
    call_id = (await env.calls())[leg_id]["CALL_ID"]
    call = (await env.h.emulator_http.get(f"/_emulator/calls/{call_id}")).json()
    assert call["record_file_id"] is not None, call
    return (await env.h.emulator_http.get(f"/_emulator/files/{call['record_file_id']}")).content


async def upload_succeeds(env: Env, linkedid: str, path: Path, content: bytes) -> dict[str, Any]:
    """A call recorded ``content`` at ``path``: its upload succeeds and the portal keeps it.

    Returns the attach job's result.
    """
    job = await uploaded(env, linkedid, path)
    assert await stored_record(env, f"{linkedid}-0") == content
    assert job.status == JobStatus.SUCCEEDED, job.last_error
    assert job.result is not None
    assert job.result["uploaded_bytes"] == len(content)
    return job.result


async def retried_now(env: Env, job: Job) -> None:
    """Make a waiting upload due now and let the uploads' worker run it."""
    async with env.h.session_factory() as session, session.begin():
        await session.execute(
            update(Job).where(Job.id == job.id).values(run_after=datetime.now(UTC))
        )
    assert env.uploads is not None
    env.uploads.wake()
    await env.settle()


class TestRecordingsByPath:
    """Uploads of recordings the PBX reports by file path, after the call's finish."""

    async def test_a_small_file_goes_base64_after_the_finish(
        self, recording_env: Env, monitor: Path
    ) -> None:
        env, linkedid = recording_env, "1764180000.1"
        content = b"RIFF" + bytes(range(256)) * 8  # 2052 bytes: below the inline limit
        (monitor / "a.wav").write_bytes(content)
        result = await upload_succeeds(env, linkedid, monitor / "a.wav", content)
        assert "FILE_ID" in result
        # Alone (not in a batch), with the content, after the finish.
        methods = [r["method"] for r in await env.rest_requests()]
        attach = [r for r in await env.rest_requests() if r["method"].endswith("attachRecord")]
        assert len(attach) == 1
        assert "FILE_CONTENT" in attach[0]["params"]
        assert methods.index(attach[0]["method"]) > max(
            i for i, m in enumerate(methods) if m in ("batch", "telephony.externalCall.finish")
        )
        logged = [entry.method for entry in env.h.api_log.entries]
        assert "telephony.externalCall.attachRecord" in logged
        assert "upload" not in logged

    async def test_a_large_file_goes_by_upload_url(self, recording_env: Env, monitor: Path) -> None:
        env, linkedid = recording_env, "1764180000.2"
        content = b"ID3" + bytes(range(256)) * 1200  # 307203 bytes: above the inline limit
        (monitor / "b.mp3").write_bytes(content)
        await upload_succeeds(env, linkedid, monitor / "b.mp3", content)
        (attach,) = [r for r in await env.rest_requests() if r["method"].endswith("attachRecord")]
        assert "FILE_CONTENT" not in attach["params"]
        assert attach["params"]["FILENAME"] == f"{linkedid}-0.mp3"
        # The upload is in the API log like any request, with no content in it.
        (upload,) = [entry for entry in env.h.api_log.entries if entry.method == "upload"]
        assert (upload.http_status, upload.error_code) == (200, None)

    async def test_a_file_outside_the_directories_dies_unread(
        self, recording_env: Env, monitor: Path, tmp_path: Path
    ) -> None:
        env, linkedid = recording_env, "1764180000.3"
        (tmp_path / "shadow.wav").write_bytes(b"root:secret")
        (monitor / "c.wav").symlink_to(tmp_path / "shadow.wav")
        job = await uploaded(env, linkedid, monitor / "c.wav")
        assert job.status == JobStatus.DEAD
        assert job.last_error is not None
        assert "RecordingRefusedError" in job.last_error
        assert "outside the recordings directories" in job.last_error
        assert not [r for r in await env.rest_requests() if r["method"].endswith("attachRecord")]
        assert (await env.calls())[f"{linkedid}-0"]["state"] == "finished"

    async def test_a_file_above_the_cap_dies(self, recording_env: Env, monitor: Path) -> None:
        env, linkedid = recording_env, "1764180000.4"
        (monitor / "d.wav").write_bytes(bytes(1_000_001))
        job = await uploaded(env, linkedid, monitor / "d.wav")
        assert job.status == JobStatus.DEAD
        assert "RecordingTooLargeError" in (job.last_error or "")

    async def test_a_file_not_there_yet_is_awaited(self, recording_env: Env, monitor: Path) -> None:
        env, linkedid = recording_env, "1764180000.5"
        await post_recorded_call(env, linkedid, monitor / "e.wav")
        await env.wait_for_jobs(
            lambda jobs: any(
                j.payload["command"]["kind"] == "attach_record"
                and j.attempts == 1
                and j.status == JobStatus.QUEUED
                for j in jobs
            ),
        )
        job = attach_job(await env.jobs())
        assert "does not exist" in (job.last_error or "")
        due = job.run_after if job.run_after.tzinfo else job.run_after.replace(tzinfo=UTC)
        assert due > datetime.now(UTC)  # backing off, not spinning
        # MixMonitor closes the file; the retry is due.
        (monitor / "e.wav").write_bytes(b"RIFF" + bytes(100))
        await retried_now(env, job)

        job = attach_job(await env.jobs())
        assert job.status == JobStatus.SUCCEEDED, job.last_error
        assert job.attempts == 2
        assert await stored_record(env, f"{linkedid}-0") == b"RIFF" + bytes(100)

    @pytest.mark.parametrize("recording_env", [{"recording_wait_seconds": 0}], indirect=True)
    async def test_a_file_that_never_comes_dies_with_a_clear_error(
        self, recording_env: Env, monitor: Path
    ) -> None:
        env, linkedid = recording_env, "1764180000.6"
        job = await uploaded(env, linkedid, monitor / "never.wav")
        assert job.status == JobStatus.DEAD
        assert job.last_error is not None
        assert "RecordingNotReadyError" in job.last_error
        assert "does not exist" in job.last_error
        assert "CALLBRIDGE_RECORDING_WAIT_SECONDS" in job.last_error

    async def test_nothing_is_uploaded_for_a_call_whose_register_failed(
        self, recording_env: Env, monitor: Path
    ) -> None:
        env, linkedid = recording_env, "1764180000.7"
        (monitor / "f.wav").write_bytes(b"RIFF" + bytes(100))
        fired = await env.add_fired_user()
        await env.post(
            outbound_started(linkedid, extension=fired),
            ev("call.answered", linkedid, 2, 5, extension=fired),
            ev("call.ended", linkedid, 3, 30, disposition="answered", talk_seconds=25),
            ev("call.recording", linkedid, 4, 31, path=str(monitor / "f.wav")),
        )
        await env.wait_for_jobs(
            lambda jobs: (
                any(j.status == JobStatus.DEAD for j in jobs)
                and all(j.status != JobStatus.RUNNING for j in jobs)
            ),
        )
        jobs = await env.jobs()
        register = next(j for j in jobs if j.payload["command"]["kind"] == "register")
        assert register.status == JobStatus.DEAD
        # The recording waits behind the dead register, as its finish does: untried, kept.
        job = attach_job(jobs)
        assert (job.status, job.attempts) == (JobStatus.QUEUED, 0)
        assert not [r for r in await env.rest_requests() if r["method"].endswith("attachRecord")]
        assert not [e for e in env.h.api_log.entries if e.method == "upload"]

    async def test_no_upload_when_the_finish_before_it_did_not_get_through(
        self, recording_env: Env, monitor: Path
    ) -> None:
        env, linkedid = recording_env, "1764180000.9"
        (monitor / "g.wav").write_bytes(b"RIFF" + bytes(100))
        # One finish uses up the method's execution-time budget: the next one is refused.
        env.h.emulator.config.method_costs["telephony.externalcall.finish"] = 500.0
        await env.post(*inbound_answered("1764180000.8"))
        await env.settle()
        await post_recorded_call(env, linkedid, monitor / "g.wav")
        await env.wait_for_jobs(
            lambda jobs: (
                any(
                    j.payload["linkedid"] == linkedid
                    and j.payload["command"]["kind"] == "finish"
                    and j.status == JobStatus.QUEUED
                    and j.last_error
                    for j in jobs
                )
                and all(j.status != JobStatus.RUNNING for j in jobs)
            ),
        )
        job = attach_job([j for j in await env.jobs() if j.payload["linkedid"] == linkedid])
        # attachRecord only after finish: the upload waits behind its finish, untried.
        assert (job.status, job.attempts) == (JobStatus.QUEUED, 0)
        assert not [r for r in await env.rest_requests() if r["method"].endswith("attachRecord")]
        assert (await env.calls())[f"{linkedid}-0"]["state"] == "registered"


# --- whose files: per-enterprise directories ---------------------------------------------------


async def set_recordings(env: Env, number: str, dirs: list[Path]) -> None:
    """Give enterprise ``number`` these recordings directories (adding it if new)."""
    async with env.h.session_factory() as session, session.begin():
        repo = EnterpriseRepository(session)
        row = await repo.by_number(number)
        if row is None:
            await repo.add(Enterprise(number=number, name=f"tenant {number}"))
            row = await repo.by_number(number)
        assert row is not None
        await repo.update(row, recordings_dirs=[str(d) for d in dirs])


@pytest.fixture
async def tenants(recording_env: Env, monitor: Path) -> tuple[Path, Path]:
    """Enterprise 100 (the portal's) records into ``monitor/100``, enterprise 200 into ``/200``."""
    a, b = monitor / "100", monitor / "200"
    a.mkdir()
    b.mkdir()
    await set_recordings(recording_env, ENTERPRISE, [a])
    await set_recordings(recording_env, "200", [b])
    return a, b


def refused(job: Job) -> str:
    assert job.status == JobStatus.DEAD, (job.status, job.last_error)
    assert job.last_error is not None
    assert job.last_error.startswith("RecordingRefusedError")
    return job.last_error


class TestEnterpriseDirectories:
    async def test_an_enterprise_cannot_upload_another_enterprises_file(
        self, recording_env: Env, tenants: tuple[Path, Path]
    ) -> None:
        env, (_a, b) = recording_env, tenants
        (b / "theirs.wav").write_bytes(WAV)
        error = refused(await uploaded(env, "1764190000.1", b / "theirs.wav"))
        assert "outside enterprise 100's recordings directories" in error
        assert "callbridge enterprise set-recordings 100" in error
        assert not [r for r in await env.rest_requests() if r["method"].endswith("attachRecord")]
        assert not [e for e in env.h.api_log.entries if e.method == "upload"]

    async def test_its_own_file_is_uploaded(
        self, recording_env: Env, tenants: tuple[Path, Path]
    ) -> None:
        env, (a, _b) = recording_env, tenants
        (a / "2026").mkdir()
        (a / "2026" / "ours.wav").write_bytes(WAV)
        job = await uploaded(env, "1764190000.2", a / "2026" / "ours.wav")
        assert job.status == JobStatus.SUCCEEDED, job.last_error
        assert await stored_record(env, "1764190000.2-0") == WAV

    @pytest.mark.parametrize("how", ["symlink", "dotdot"])
    async def test_escapes_into_another_enterprises_directory_are_refused(
        self, recording_env: Env, tenants: tuple[Path, Path], how: str
    ) -> None:
        env, (a, b) = recording_env, tenants
        (b / "theirs.wav").write_bytes(WAV)
        if how == "symlink":
            (a / "link.wav").symlink_to(b / "theirs.wav")
            path = str(a / "link.wav")
        else:
            path = f"{a}/../200/theirs.wav"
        error = refused(await uploaded(env, "1764190000.3", path))
        assert f"resolved to {str(b / 'theirs.wav')!r}" in error
        assert "outside enterprise 100's recordings directories" in error
        assert not [r for r in await env.rest_requests() if r["method"].endswith("attachRecord")]

    async def test_own_directories_outside_the_bridges_are_refused(
        self, recording_env: Env, tmp_path: Path
    ) -> None:
        # CALLBRIDGE_RECORDINGS_DIRS stays the upper bound, whatever an enterprise was given.
        env, elsewhere = recording_env, tmp_path / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "a.wav").write_bytes(WAV)
        await set_recordings(env, ENTERPRISE, [elsewhere])
        error = refused(await uploaded(env, "1764190000.4", elsewhere / "a.wav"))
        assert "outside the recordings directories" in error
        assert "CALLBRIDGE_RECORDINGS_DIRS" in error

    async def test_a_shared_bridge_warns_about_an_enterprise_without_its_own(
        self, recording_env: Env, monitor: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        env = recording_env
        await set_recordings(env, "200", [monitor / "200"])
        caplog.set_level(logging.WARNING, logger="callbridge.worker.uploads")
        for n in (1, 2):
            linkedid = f"1764190000.{4 + n}"
            (monitor / f"{n}.wav").write_bytes(WAV)
            await post_recorded_call(env, linkedid, monitor / f"{n}.wav")
        await env.settle()

        # Still uploaded (the bridge's directories are the fallback), with one warning.
        assert [j.status for j in await env.jobs() if j.kind == UPLOAD_KIND] == [
            JobStatus.SUCCEEDED
        ] * 2
        warnings = [r.getMessage() for r in caplog.records if r.name.endswith("uploads")]
        assert len(warnings) == 1, warnings
        assert "enterprise 100 has no recordings directories of its own" in warnings[0]
        assert "callbridge enterprise set-recordings 100 DIR" in warnings[0]

    async def test_a_bridge_of_one_enterprise_does_not_warn(
        self, recording_env: Env, monitor: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        env = recording_env
        caplog.set_level(logging.WARNING, logger="callbridge.worker.uploads")
        (monitor / "a.wav").write_bytes(WAV)
        job = await uploaded(env, "1764190000.7", monitor / "a.wav")
        assert job.status == JobStatus.SUCCEEDED
        assert not [r for r in caplog.records if r.name.endswith("uploads")]


# --- outside the portal's lane, inside its budget ----------------------------------------------


class TestUploadLane:
    async def test_a_register_goes_while_an_upload_is_in_flight(
        self, fresh_database_url: str, tmp_path: Path, monitor: Path
    ) -> None:
        in_flight, release = asyncio.Event(), asyncio.Event()

        class SlowUploads(httpx.AsyncBaseTransport):
            """The portal's upload endpoint takes as long as the test says."""

            def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
                self.inner = inner

            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                if request.url.path.startswith("/rest/upload"):
                    in_flight.set()
                    await release.wait()
                return await self.inner.handle_async_request(request)

        overrides = {"recordings_dirs": [monitor], "recording_inline_max_bytes": INLINE_MAX}
        async with environment(
            fresh_database_url, tmp_path, wrap_transport=SlowUploads, settings_overrides=overrides
        ) as env:
            content = b"RIFF" + bytes(range(256)) * 1200  # 307204 bytes: by uploadUrl
            (monitor / "big.wav").write_bytes(content)
            await post_recorded_call(env, "1764190100.1", monitor / "big.wav")
            await asyncio.wait_for(in_flight.wait(), 15)

            # Another call rings on the same portal while the upload hangs.
            await env.post(
                ev(
                    "call.started",
                    "1764190100.2",
                    1,
                    100,
                    direction="inbound",
                    external_number="84957654321",
                    line="4951110101",
                ),
                ev("call.ringing", "1764190100.2", 2, 101, extensions=["102"]),
            )
            for _ in range(500):
                if "1764190100.2-0" in await env.calls():
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the register waited for the upload")

            assert not release.is_set()
            assert attach_job(await env.jobs()).status == JobStatus.RUNNING
            release.set()
            await env.settle()
            assert attach_job(await env.jobs()).status == JobStatus.SUCCEEDED
            assert await stored_record(env, "1764190100.1-0") == content

    @pytest.mark.parametrize(("size", "slots"), [(200, 1), (300_000, 2)], ids=["base64", "upload"])
    async def test_each_request_of_an_upload_takes_a_slot_of_the_budget(
        self, recording_env: Env, monitor: Path, size: int, slots: int
    ) -> None:
        env = recording_env
        (monitor / "a.wav").write_bytes(b"RIFF" + bytes(size))
        job = await uploaded(env, "1764190100.3", monitor / "a.wav")
        assert job.status == JobStatus.SUCCEEDED, job.last_error

        taken: list[str] = []

        class Counting:
            def __init__(self, inner: RateLimiter) -> None:
                self.inner = inner

            async def acquire(self, key: str, plan: RatePlan) -> float:
                taken.append(key)
                return await self.inner.acquire(key, plan)

            async def penalise(self, key: str, plan: RatePlan) -> None:
                await self.inner.penalise(key, plan)

        h = env.h
        portals = Portals(
            h.settings,
            h.session_factory,
            h.portals.http,
            h.box,
            limiter=Counting(h.portals.limiter),
        )
        # The core again, as a retry would run it (attachRecord attaches the file once more).
        result = await RecordingUploader(h.settings, portals).upload(
            job.integration_id, job.payload, 1, 10
        )
        assert result["uploaded_bytes"] == size + 4
        assert taken == [h.emulator.portal.member_id] * slots


class TestBucketMirror:
    """The lanes' reserve counts the uploads' requests: they take slots of the same bucket."""

    async def test_uploads_take_free_slots_of_the_lanes_mirror_and_hold_bulk_commands(
        self, fresh_database_url: str, tmp_path: Path, monitor: Path
    ) -> None:
        overrides = {"recordings_dirs": [monitor], "recording_inline_max_bytes": INLINE_MAX}
        # A bucket that drains a slot a minute: what the mirror counts does not leak away
        # while the test looks.
        plan = {"rate_plan": {"capacity": 50, "rate": 1 / 60}}
        async with environment(
            fresh_database_url, tmp_path, settings_overrides=overrides, integration_settings=plan
        ) as env:
            h, dispatcher = env.h, env.dispatcher
            row = await h.integration()
            assert row is not None
            credentials = h.portals.credentials_for(row)
            assert credentials.plan.rate == pytest.approx(1 / 60)
            sent_before = len(await env.rest_requests())
            idle = dispatcher.free_slots(credentials)
            assert idle == credentials.plan.client_side().capacity

            # A recorded call (its commands, then its upload) and a call still talking.
            (monitor / "a.wav").write_bytes(WAV)
            job = await uploaded(env, "1764190300.1", monitor / "a.wav")
            assert job.status == JobStatus.SUCCEEDED, job.last_error
            talking = inbound_answered("1764190300.2")
            await env.post(*talking[:3])
            await env.settle()
            # Each request the portal got took one slot, the lanes' and the upload's alike.
            sent = len(await env.rest_requests()) - sent_before
            before = dispatcher.free_slots(credentials)
            assert idle - before == pytest.approx(sent, abs=0.1)

            # N more upload requests (the core again, as a retry runs it) outside the lanes.
            uploads = 5
            uploader = RecordingUploader(h.settings, h.portals)
            for _ in range(uploads):
                await uploader.upload(job.integration_id, job.payload, 1, 10)
            after = dispatcher.free_slots(credentials)
            assert before - after == pytest.approx(uploads, abs=0.1)

            # A reserve the bucket kept before the uploads and lacks after them: the talking
            # call's finish (a bulk command) waits for it.
            dispatcher.tuning = replace(dispatcher.tuning, linger=0.0, reserve=math.ceil(after))
            assert before >= dispatcher.tuning.reserve + 1
            await env.post(talking[3])
            await env.wait_for_jobs(
                lambda jobs: any(
                    j.payload["command"]["kind"] == "finish"
                    and j.payload["linkedid"] == "1764190300.2"
                    and j.status == JobStatus.RUNNING
                    for j in jobs
                )
            )
            await asyncio.sleep(0.5)
            methods = [r["method"] for r in await env.rest_requests()][sent_before + sent :]
            assert methods == ["telephony.externalCall.attachRecord"] * uploads
            assert (await env.calls())["1764190300.2-0"]["state"] != "finished"

            # Without the reserve it goes.
            dispatcher.tuning = replace(dispatcher.tuning, reserve=0)
            dispatcher.nudge([row.id])
            await env.settle()
            assert (await env.calls())["1764190300.2-0"]["state"] == "finished"


class TestUploadWorker:
    async def test_runs_only_uploads_at_its_own_concurrency(self, recording_env: Env) -> None:
        uploads = recording_env.uploads
        assert uploads is not None
        assert uploads.kinds == frozenset({UPLOAD_KIND})
        assert uploads.concurrency == recording_env.h.settings.recording_upload_concurrency


class TestReauthorisation:
    async def test_refused_tokens_pause_the_portal_and_the_upload_waits_unspent(
        self, recording_env: Env, monitor: Path
    ) -> None:
        env, linkedid = recording_env, "1764190200.1"
        await env.post(*inbound_answered(linkedid))
        await env.settle()
        await env.revoke_tokens()
        (monitor / "a.wav").write_bytes(WAV)
        await env.post(ev("call.recording", linkedid, 5, 60, path=str(monitor / "a.wav")))
        await env.wait_for_jobs(
            lambda jobs: any(j.kind == UPLOAD_KIND and j.last_error for j in jobs),
        )

        job = attach_job(await env.jobs())
        assert (job.status, job.attempts) == (JobStatus.QUEUED, 0)
        assert job.last_error is not None
        assert job.last_error.startswith(("InvalidToken", "RefreshRejected"))
        integration = await env.h.integration()
        assert integration is not None
        assert integration.status == IntegrationStatus.NEEDS_REAUTH

        await env.h.install()  # the administrator reinstalls the app
        await retried_now(env, job)
        assert attach_job(await env.jobs()).status == JobStatus.SUCCEEDED
        assert await stored_record(env, f"{linkedid}-0") == WAV


class TestRunBitrix24:
    async def test_runs_the_dispatcher_and_the_uploads_until_cancelled(
        self, fresh_database_url: str, tmp_path: Path
    ) -> None:
        settings = callbridge_settings(
            fresh_database_url, tmp_path, worker_poll_interval_seconds=0.05
        )
        engine = create_engine(fresh_database_url)
        try:
            task = asyncio.create_task(
                run_bitrix24(
                    settings,
                    create_session_factory(engine),
                    queue=JobQueue(),
                    listen_url=None,
                    name="w",
                )
            )
            await asyncio.sleep(0.3)
            running = {t.get_name() for t in asyncio.all_tasks()}
            assert {"bitrix24-dispatcher", "recording-uploads"} <= running
            assert not task.done()
            task.cancel()
            await asyncio.wait([task], timeout=10)
            assert task.cancelled()
            running = {t.get_name() for t in asyncio.all_tasks()}
            assert not {"bitrix24-dispatcher", "recording-uploads"} & running
        finally:
            await engine.dispose()


class TestWhoseDirectories:
    async def test_the_directories_are_those_of_the_calls_enterprise(
        self, recording_env: Env, tenants: tuple[Path, Path]
    ) -> None:
        env, (a, _b) = recording_env, tenants
        (a / "ours.wav").write_bytes(WAV)
        job = await uploaded(env, "1764190300.1", a / "ours.wav")
        assert job.status == JobStatus.SUCCEEDED, job.last_error
        async with env.h.session_factory() as session:
            other = await EnterpriseRepository(session).by_number("200")
        assert other is not None

        # The same job, as if enterprise 200's PBX had reported it on this portal.
        uploader = RecordingUploader(env.h.settings, env.h.portals)
        with pytest.raises(RecordingRefusedError, match="outside enterprise 200's"):
            await uploader.upload(
                job.integration_id, job.payload | {"enterprise_id": other.id}, 1, 10
            )
