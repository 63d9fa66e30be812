"""Which recording files on the PBX callbridge may read, and how it reads them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from callbridge.config import Settings
from callbridge.domain.errors import Permanent, Retryable
from callbridge.worker.recordings import (
    CHUNK_BYTES,
    RecordingMissingError,
    RecordingNotReadyError,
    RecordingRefusedError,
    RecordingTooLargeError,
    missing_recording_error,
    missing_retry_delay,
    missing_wait_so_far,
    open_recording,
)

WAV = b"RIFF$\x00\x00\x00WAVEfmt " + bytes(28)
CAP = 1024


@pytest.fixture
def monitor(tmp_path: Path) -> Path:
    path = tmp_path / "spool" / "monitor"
    path.mkdir(parents=True)
    return path


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "shadow"
    path.write_bytes(b"root:$6$secret")
    return path


class TestOpenRecording:
    def test_a_file_inside_a_recordings_directory_is_opened(self, monitor: Path) -> None:
        (monitor / "a.wav").write_bytes(WAV)
        recording = open_recording(str(monitor / "a.wav"), [monitor], CAP)
        with recording.file:
            assert (recording.path, recording.size) == (monitor / "a.wav", len(WAV))
            assert recording.file.read() == WAV

    def test_a_file_in_a_subdirectory_is_inside(self, monitor: Path) -> None:
        (monitor / "2026" / "11").mkdir(parents=True)
        (monitor / "2026" / "11" / "a.mp3").write_bytes(b"ID3" + bytes(10))
        recording = open_recording(str(monitor / "2026/11/a.mp3"), [monitor], CAP)
        recording.close()
        assert recording.size == 13

    def test_any_of_several_directories_will_do(self, monitor: Path, tmp_path: Path) -> None:
        other = tmp_path / "nfs"
        other.mkdir()
        (other / "a.wav").write_bytes(WAV)
        open_recording(str(other / "a.wav"), [monitor, other], CAP).close()

    def test_a_file_outside_is_refused(self, monitor: Path, secret: Path) -> None:
        with pytest.raises(RecordingRefusedError, match="outside the recordings directories"):
            open_recording(str(secret), [monitor], CAP)

    def test_dot_dot_out_of_the_directory_is_refused(self, monitor: Path, secret: Path) -> None:
        escape = f"{monitor}/../../{secret.name}"
        assert Path(escape).exists()
        with pytest.raises(RecordingRefusedError, match="outside"):
            open_recording(escape, [monitor], CAP)

    def test_dot_dot_that_stays_inside_is_fine(self, monitor: Path) -> None:
        (monitor / "sub").mkdir()
        (monitor / "a.wav").write_bytes(WAV)
        open_recording(f"{monitor}/sub/../a.wav", [monitor], CAP).close()

    def test_a_symlink_out_of_the_directory_is_refused(self, monitor: Path, secret: Path) -> None:
        (monitor / "a.wav").symlink_to(secret)
        with pytest.raises(RecordingRefusedError, match="outside"):
            open_recording(str(monitor / "a.wav"), [monitor], CAP)

    def test_a_symlinked_subdirectory_out_is_refused(
        self, monitor: Path, secret: Path, tmp_path: Path
    ) -> None:
        (monitor / "etc").symlink_to(tmp_path, target_is_directory=True)
        with pytest.raises(RecordingRefusedError, match="outside"):
            open_recording(str(monitor / "etc" / secret.name), [monitor], CAP)

    def test_a_symlinked_recordings_directory_is_followed(
        self, monitor: Path, tmp_path: Path
    ) -> None:
        # /var/spool/asterisk/monitor is often a link to a bigger disk.
        link = tmp_path / "monitor-link"
        link.symlink_to(monitor, target_is_directory=True)
        (monitor / "a.wav").write_bytes(WAV)
        open_recording(str(link / "a.wav"), [link], CAP).close()
        open_recording(str(monitor / "a.wav"), [link], CAP).close()

    def test_a_sibling_directory_with_the_same_prefix_is_outside(
        self, monitor: Path, tmp_path: Path
    ) -> None:
        sibling = monitor.parent / "monitor-old"
        sibling.mkdir()
        (sibling / "a.wav").write_bytes(WAV)
        with pytest.raises(RecordingRefusedError):
            open_recording(str(sibling / "a.wav"), [monitor], CAP)

    def test_a_relative_path_is_refused(self, monitor: Path) -> None:
        with pytest.raises(RecordingRefusedError, match="not absolute"):
            open_recording("monitor/a.wav", [monitor], CAP)

    def test_no_directory_configured_refuses_everything(self, monitor: Path) -> None:
        (monitor / "a.wav").write_bytes(WAV)
        with pytest.raises(RecordingRefusedError, match="CALLBRIDGE_RECORDINGS_DIRS"):
            open_recording(str(monitor / "a.wav"), [], CAP)

    def test_a_directory_is_refused(self, monitor: Path) -> None:
        (monitor / "a.wav").mkdir()
        with pytest.raises(RecordingRefusedError, match="regular file"):
            open_recording(str(monitor / "a.wav"), [monitor], CAP)

    def test_a_missing_file_is_worth_waiting_for(self, monitor: Path) -> None:
        with pytest.raises(RecordingMissingError, match="does not exist") as caught:
            open_recording(str(monitor / "later.wav"), [monitor], CAP)
        assert isinstance(caught.value, Retryable)
        assert not isinstance(caught.value, Permanent)

    def test_an_empty_file_is_still_being_written(self, monitor: Path) -> None:
        (monitor / "a.wav").touch()
        with pytest.raises(RecordingMissingError, match="still empty"):
            open_recording(str(monitor / "a.wav"), [monitor], CAP)

    def test_a_missing_file_outside_is_refused_not_awaited(self, monitor: Path) -> None:
        with pytest.raises(RecordingRefusedError):
            open_recording(f"{monitor}/../never.wav", [monitor], CAP)

    def test_a_file_above_the_cap_is_refused(self, monitor: Path) -> None:
        (monitor / "a.wav").write_bytes(bytes(CAP + 1))
        with pytest.raises(RecordingTooLargeError, match=f"{CAP + 1} bytes") as caught:
            open_recording(str(monitor / "a.wav"), [monitor], CAP)
        assert isinstance(caught.value, Permanent)

    def test_a_file_at_the_cap_is_fine(self, monitor: Path) -> None:
        (monitor / "a.wav").write_bytes(bytes(CAP))
        open_recording(str(monitor / "a.wav"), [monitor], CAP).close()

    @pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
    def test_an_unreadable_file_is_refused(self, monitor: Path) -> None:
        (monitor / "a.wav").write_bytes(WAV)
        (monitor / "a.wav").chmod(0)
        with pytest.raises(RecordingRefusedError, match="cannot be opened"):
            open_recording(str(monitor / "a.wav"), [monitor], CAP)


class TestEnterpriseDirectories:
    """With directories of its own, an enterprise reads inside them and the bridge's only."""

    @pytest.fixture
    def tenants(self, monitor: Path) -> tuple[Path, Path]:
        a, b = monitor / "100", monitor / "200"
        a.mkdir()
        b.mkdir()
        (a / "ours.wav").write_bytes(WAV)
        (b / "theirs.wav").write_bytes(WAV)
        return a, b

    def test_its_own_file_is_opened(self, monitor: Path, tenants: tuple[Path, Path]) -> None:
        a, _b = tenants
        open_recording(str(a / "ours.wav"), [monitor], CAP, enterprise_dirs=[a]).close()

    def test_another_enterprises_file_is_refused_naming_the_fix(
        self, monitor: Path, tenants: tuple[Path, Path]
    ) -> None:
        a, b = tenants
        with pytest.raises(RecordingRefusedError) as caught:
            open_recording(
                str(b / "theirs.wav"), [monitor], CAP, enterprise_dirs=[a], enterprise="100"
            )
        assert "outside enterprise 100's recordings directories" in str(caught.value)
        assert "callbridge enterprise set-recordings 100 DIR..." in str(caught.value)
        assert isinstance(caught.value, Permanent)

    @pytest.mark.parametrize("how", ["file link", "directory link", "dotdot"])
    def test_escapes_into_another_enterprises_directory_are_refused(
        self, monitor: Path, tenants: tuple[Path, Path], how: str
    ) -> None:
        a, b = tenants
        if how == "file link":
            (a / "link.wav").symlink_to(b / "theirs.wav")
            path = str(a / "link.wav")
        elif how == "directory link":
            (a / "shared").symlink_to(b, target_is_directory=True)
            path = str(a / "shared" / "theirs.wav")
        else:
            path = f"{a}/../200/theirs.wav"
        with pytest.raises(RecordingRefusedError, match="outside enterprise 100's"):
            open_recording(path, [monitor], CAP, enterprise_dirs=[a], enterprise="100")

    def test_the_bridges_directories_stay_the_upper_bound(
        self, monitor: Path, tmp_path: Path
    ) -> None:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "a.wav").write_bytes(WAV)
        with pytest.raises(RecordingRefusedError, match="CALLBRIDGE_RECORDINGS_DIRS"):
            open_recording(str(elsewhere / "a.wav"), [monitor], CAP, enterprise_dirs=[elsewhere])

    def test_no_bridge_directory_refuses_even_an_enterprises_own(
        self, tenants: tuple[Path, Path]
    ) -> None:
        a, _b = tenants
        with pytest.raises(RecordingRefusedError, match="no recordings directory"):
            open_recording(str(a / "ours.wav"), [], CAP, enterprise_dirs=[a])

    def test_any_of_its_directories_will_do(
        self, monitor: Path, tenants: tuple[Path, Path]
    ) -> None:
        a, b = tenants
        open_recording(str(b / "theirs.wav"), [monitor], CAP, enterprise_dirs=[a, b]).close()


class TestReading:
    async def test_chunks_stream_exactly_the_file(self, monitor: Path) -> None:
        content = bytes(range(256)) * (2 * CHUNK_BYTES // 256 + 3)
        (monitor / "a.wav").write_bytes(content)
        recording = open_recording(str(monitor / "a.wav"), [monitor], len(content))
        with recording.file:
            chunks = [chunk async for chunk in recording.chunks()]
        assert [len(chunk) for chunk in chunks] == [CHUNK_BYTES, CHUNK_BYTES, 3 * 256]
        assert b"".join(chunks) == content

    async def test_a_file_that_shrinks_while_read_is_not_ready(self, monitor: Path) -> None:
        (monitor / "a.wav").write_bytes(WAV)
        recording = open_recording(str(monitor / "a.wav"), [monitor], CAP)
        (monitor / "a.wav").write_bytes(WAV[:4])
        with recording.file, pytest.raises(RecordingMissingError, match="shrank"):
            _ = [chunk async for chunk in recording.chunks()]


class TestWaiting:
    def test_backoff_doubles_up_to_two_minutes(self) -> None:
        assert [missing_retry_delay(n) for n in range(1, 8)] == [5, 10, 20, 40, 80, 120, 120]

    def test_time_waited_before_a_run(self) -> None:
        assert [missing_wait_so_far(n) for n in (1, 2, 3, 6, 10)] == [0, 5, 15, 155, 635]

    def test_a_missing_file_is_waited_for_with_backoff(self) -> None:
        error = missing_recording_error(RecordingMissingError("gone"), 3, 10, 600)
        assert type(error) is RecordingMissingError
        assert error.retry_after == 20

    @pytest.mark.parametrize(("attempt", "max_attempts", "wait"), [(7, 10, 200), (3, 3, 600)])
    def test_past_the_wait_or_the_attempts_it_is_not_ready_for_good(
        self, attempt: int, max_attempts: int, wait: float
    ) -> None:
        error = missing_recording_error(RecordingMissingError("gone"), attempt, max_attempts, wait)
        assert isinstance(error, RecordingNotReadyError)
        assert isinstance(error, Permanent)
        assert f"CALLBRIDGE_RECORDING_WAIT_SECONDS={wait:g}" in str(error)


class TestSettings:
    def test_directories_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(
            "CALLBRIDGE_RECORDINGS_DIRS", "/var/spool/asterisk/monitor, /mnt/pbx2/monitor"
        )
        settings = Settings()
        assert settings.recordings_dirs == [
            Path("/var/spool/asterisk/monitor"),
            Path("/mnt/pbx2/monitor"),
        ]

    def test_default_is_the_mixmonitor_directory(self) -> None:
        assert Settings().recordings_dirs == [Path("/var/spool/asterisk/monitor")]

    def test_relative_directories_are_refused(self) -> None:
        with pytest.raises(ValueError, match="not an absolute directory"):
            Settings(recordings_dirs=[Path("monitor")])
