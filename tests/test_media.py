"""wan_app.media against real files and the real ffmpeg binary from the imageio-ffmpeg wheel."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from wan_app import media
from wan_app.errors import UserError
from wan_app.media import GrowingVideo, probe, read_metadata, read_video, write_mp4

# Saturated primaries, white, black and mixed colours, in flat 8-pixel-wide bars: a swapped channel
# order, a reader decoding with another colour matrix than the writer used (BT.601 vs 709 differ by 10-30
# code values on these) or a range mistake (16-235 vs 0-255) all move these far beyond the tolerance.
BARS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255],
                 [0, 0, 0], [128, 64, 200], [30, 200, 120], [200, 200, 20]], np.uint8)


def bars_video(frames=9, size=64) -> np.ndarray:
    v = np.zeros((frames, size, size, 3), np.uint8)
    for i, c in enumerate(BARS):
        v[:, :, i * 8:(i + 1) * 8] = c
    return v


def numbered_frames(n, h=32, w=48, start=0) -> np.ndarray:
    """Flat grey frames whose brightness encodes their index (steps of 8), to follow frames through
    encoding, joining and resampling."""
    return np.stack([np.full((h, w, 3), ((start + i) * 8) % 256, np.uint8) for i in range(n)])


def frame_ids(video: np.ndarray) -> list[int]:
    return [int(round(float(f.mean()) / 8)) for f in video]


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_written_video_has_exact_frame_count_size_and_fps(tmp_path):
    path = write_mp4(bars_video(9), tmp_path / "a.mp4", fps=16)
    info = probe(path)
    assert (info.frames, info.width, info.height, info.fps) == (9, 64, 64, 16.0)
    assert info.seconds == pytest.approx(9 / 16)


def test_written_video_is_browser_playable_h264_yuv420p_with_faststart(tmp_path):
    path = write_mp4(bars_video(9), tmp_path / "a.mp4", fps=16)
    desc = subprocess.run([media.ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                          capture_output=True, text=True).stderr
    assert "Video: h264" in desc and "yuv420p" in desc
    data = path.read_bytes()
    # faststart: the index (moov) comes before the media data (mdat), so playback starts while loading
    assert data.index(b"moov") < data.index(b"mdat")


def test_colours_are_converted_with_the_bt709_matrix_they_are_tagged_with(tmp_path):
    # Browsers convert back with the matrix named in the stream; it must be the one used to encode.
    red = np.zeros((1, 16, 16, 3), np.uint8)
    red[..., 0] = 255
    path = write_mp4(red, tmp_path / "red.mp4", fps=16)
    desc = subprocess.run([media.ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                          capture_output=True, text=True).stderr
    assert "bt709" in desc
    yuv = subprocess.run([media.ffmpeg_exe(), "-loglevel", "error", "-i", str(path), "-f", "rawvideo",
                          "-pix_fmt", "yuv420p", "-"], capture_output=True, check=True).stdout
    luma = np.frombuffer(yuv[:256], np.uint8)
    # limited-range BT.709: Y = 16 + 219 * 0.2126 = 62.6 for pure red (BT.601 would give 81)
    assert abs(float(luma.mean()) - 62.6) <= 2


def test_pixel_values_survive_within_h264_tolerance(tmp_path):
    src = bars_video(9)
    got = read_video(write_mp4(src, tmp_path / "a.mp4", fps=16))
    assert got.shape == src.shape
    # Bar centres (2 px away from the colour edges, where 4:2:0 chroma subsampling blurs by design):
    # crf 18 on flat areas plus 8-bit RGB->YUV->RGB rounding costs a few code values; 4 allows that
    # while any colour-handling bug (see BARS) is 10+ off.
    centres = got[:, :, [i * 8 + 4 for i in range(8)]].astype(int)
    expected = np.broadcast_to(BARS.astype(int), centres.shape)
    assert np.abs(centres - expected).max() <= 4
    # Whole frame, edges included: the mean error stays small.
    assert np.abs(got.astype(int) - src.astype(int)).mean() < 4


def test_odd_sizes_become_even_by_repeating_the_edge(tmp_path):
    src = np.zeros((9, 33, 47, 3), np.uint8)
    src[:, :, :, 0] = np.linspace(0, 250, 47, dtype=np.uint8)[None, None, :]   # red ramp left to right
    src[:, -1, :, 1] = 200                                                    # a green last row
    path = write_mp4(src, tmp_path / "odd.mp4", fps=16)
    info = probe(path)
    assert (info.width, info.height, info.frames) == (48, 34, 9)
    got = read_video(path).astype(int)
    assert abs(got[:, 16, -1, 0].mean() - 250) <= 6      # the added column repeats the brightest red
    assert abs(got[:, -1, 20, 1].mean() - 200) <= 6      # the added row repeats the green row


def test_metadata_round_trips_from_sidecar_and_from_the_mp4_alone(tmp_path):
    meta = {"prompt": "a cat = 🐈; #1 \\ back\nslash, 日本語", "seed": 42, "guidance": 5.0,
            "negative_prompt": None, "sizes": [832, 480]}
    path = write_mp4(bars_video(9), tmp_path / "m.mp4", fps=16, metadata=meta)
    sidecar = tmp_path / "m.json"
    # the sidecar is the metadata plus the size of the video it describes (see media.STAMP_KEY)
    assert json.loads(sidecar.read_text(encoding="utf-8")) == {**meta, media.STAMP_KEY: path.stat().st_size}
    assert read_metadata(path) == meta
    sidecar.unlink()
    assert read_metadata(path) == meta          # from the mp4's comment tag


def test_a_video_without_our_metadata_has_none(tmp_path):
    path = write_mp4(bars_video(9), tmp_path / "plain.mp4", fps=16)
    assert not (tmp_path / "plain.json").exists()
    assert read_metadata(path) is None


def test_frames_can_stream_in_as_single_frames_and_batches(tmp_path):
    parts = [numbered_frames(1)[0], numbered_frames(3, start=1), numbered_frames(5, start=4)]
    path = write_mp4(iter(parts), tmp_path / "s.mp4", fps=8)
    assert probe(path).frames == 9
    assert frame_ids(read_video(path)) == list(range(9))


def test_a_bad_frame_mid_stream_leaves_no_file_and_no_temp_litter(tmp_path):
    def frames():
        yield numbered_frames(4)
        yield np.zeros((32, 40, 3), np.uint8)      # a different size after 4 good frames

    with pytest.raises(ValueError, match="40x32"):
        write_mp4(frames(), tmp_path / "bad.mp4", fps=16, metadata={"a": 1})
    assert files_in(tmp_path) == []


def test_a_failed_write_keeps_the_previous_file_at_the_path(tmp_path):
    path = write_mp4(numbered_frames(5), tmp_path / "v.mp4", fps=16, metadata={"v": 1})
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_mp4([numbered_frames(2), np.zeros((2, 8, 8), np.uint8)], path, fps=16, metadata={"v": 2})
    assert path.read_bytes() == before
    assert read_metadata(path) == {"v": 1}
    assert files_in(tmp_path) == ["v.json", "v.mp4"]


def test_an_ffmpeg_failure_leaves_no_file_and_no_temp_litter(tmp_path, monkeypatch):
    monkeypatch.setattr(media, "PRESET", "no-such-preset")   # x264 refuses it: ffmpeg exits with an error
    with pytest.raises(UserError) as e:
        write_mp4(numbered_frames(9), tmp_path / "f.mp4", fps=16, metadata={"a": 1})
    # one message naming the video, without ffmpeg's own lines (those go to the log)
    assert e.value.field == "out" and "f.mp4" in e.value.problem and "nothing was saved" in e.value.fix
    assert "x264" not in str(e.value) and "preset" not in str(e.value)
    assert files_in(tmp_path) == []


def test_an_unwritable_folder_fails_without_creating_anything(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(UserError) as e:
        write_mp4(numbered_frames(9), blocker / "v.mp4", fps=16)
    assert e.value.field == "out" and "could not write" in e.value.problem
    assert files_in(tmp_path) == ["not_a_folder"]


def test_read_video_covers_then_center_crops(tmp_path):
    # 96x64: red | green | blue thirds. Covering 32x32 scales by 0.5 to 48x32, then crops 8 px per side,
    # so the colour edges at x=32 and x=64 land at x=8 and x=24 of the output.
    src = np.zeros((9, 64, 96, 3), np.uint8)
    src[:, :, :32, 0] = 255
    src[:, :, 32:64, 1] = 255
    src[:, :, 64:, 2] = 255
    got = read_video(write_mp4(src, tmp_path / "w.mp4", fps=16), width=32, height=32)
    assert got.shape == (9, 32, 32, 3)
    channel = got[4, 16].argmax(axis=-1)
    assert list(channel[:6]) == [0] * 6
    assert list(channel[11:21]) == [1] * 10
    assert list(channel[27:]) == [2] * 5


def test_read_video_with_one_side_keeps_the_aspect_ratio(tmp_path):
    path = write_mp4(numbered_frames(3, h=32, w=64), tmp_path / "r.mp4", fps=16)
    assert read_video(path, width=32).shape == (3, 16, 32, 3)
    assert read_video(path, height=64).shape == (3, 64, 128, 3)


def test_reading_30fps_at_16fps_picks_the_nearest_frames(tmp_path):
    path = write_mp4(numbered_frames(30), tmp_path / "30.mp4", fps=30)
    got = read_video(path, fps=16)
    assert len(got) == 16                        # one second of video at 16 fps
    assert frame_ids(got) == [int(np.floor(k * 30 / 16 + 0.5)) for k in range(16)]


def test_reading_16fps_at_30fps_repeats_frames(tmp_path):
    path = write_mp4(numbered_frames(16), tmp_path / "16.mp4", fps=16)
    got = read_video(path, fps=30)
    assert len(got) == 30
    assert frame_ids(got) == [int(np.floor(k * 16 / 30 + 0.5)) for k in range(30)]


def test_max_frames_and_last_frames_select_the_head_and_tail(tmp_path):
    path = write_mp4(numbered_frames(20), tmp_path / "20.mp4", fps=16)
    assert frame_ids(read_video(path, max_frames=5)) == [0, 1, 2, 3, 4]
    assert frame_ids(read_video(path, last_frames=5)) == [15, 16, 17, 18, 19]
    assert frame_ids(read_video(path, last_frames=50)) == list(range(20))


def test_other_containers_are_probed_and_read_exactly(tmp_path):
    src = tmp_path / "src.mp4"
    write_mp4(numbered_frames(13), src, fps=24)
    for name, codec in (("v.webm", ["-c:v", "libvpx-vp9"]), ("v.avi", ["-c:v", "mjpeg", "-q:v", "2"]),
                        ("v.mkv", ["-c:v", "libx264"])):
        out = tmp_path / name
        subprocess.run([media.ffmpeg_exe(), "-loglevel", "error", "-i", str(src), *codec, str(out)],
                       check=True)
        info = probe(out)
        assert (info.frames, info.width, info.height) == (13, 48, 32), name
        assert info.fps == pytest.approx(24), name
        assert frame_ids(read_video(out)) == list(range(13)), name


def test_the_ffmpeg_fallback_reads_what_opencv_cannot(tmp_path, monkeypatch):
    path = write_mp4(numbered_frames(9), tmp_path / "f.mp4", fps=16)
    import cv2

    class Blind:
        def __init__(self, *a):
            pass

        def isOpened(self):
            return False

        def release(self):
            pass

    monkeypatch.setattr(cv2, "VideoCapture", Blind)
    info = probe(path)
    assert (info.frames, info.width, info.height, info.fps) == (9, 48, 32, 16.0)
    assert frame_ids(read_video(path, fps=8)) == [0, 2, 4, 6, 8]


@pytest.mark.parametrize("content", [b"", b"this is not a video at all\n" * 50])
def test_unreadable_input_is_a_user_error_naming_the_video(tmp_path, content):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    for call in (read_video, probe):
        with pytest.raises(UserError) as e:
            call(bad)
        assert e.value.field == "video" and e.value.fix


def test_a_missing_file_is_a_user_error_naming_the_video(tmp_path):
    with pytest.raises(UserError) as e:
        read_video(tmp_path / "nope.mp4")
    assert e.value.field == "video"


# ------------------------------------------------------------------------------------ GrowingVideo

def test_growing_video_is_complete_and_playable_after_every_append(tmp_path):
    path = tmp_path / "long.mp4"
    gv = GrowingVideo(path, fps=16, metadata={"prompt": "grow"})
    total = 0
    for n in (4, 5, 6):
        assert gv.append(numbered_frames(n, start=total)) == n
        total += n
        assert gv.frames_written == total
        assert probe(path).frames == total
        assert frame_ids(read_video(path)) == list(range(total))   # in order, no frame lost or doubled
    assert read_metadata(path) == {"prompt": "grow"}
    (tmp_path / "long.json").unlink()
    assert read_metadata(path) == {"prompt": "grow"}
    assert sorted(p.name for p in gv.parts_dir.glob("seg_*.mp4")) == [
        "seg_00000.mp4", "seg_00001.mp4", "seg_00002.mp4"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_growing_video_continues_after_reopening(tmp_path):
    path = tmp_path / "long.mp4"
    gv = GrowingVideo(path, fps=16, metadata={"w": 1})
    gv.append(numbered_frames(5))
    gv.append(numbered_frames(4, start=5))
    del gv
    again = GrowingVideo.open_existing(path)
    assert again.frames_written == 9 and again.fps == 16 and again.metadata == {"w": 1}
    again.append(numbered_frames(3, start=9), metadata={"w": 3})
    assert probe(path).frames == 12
    assert frame_ids(read_video(path)) == list(range(12))
    assert read_metadata(path) == {"w": 3}


def test_growing_video_rejects_a_different_size_and_keeps_what_it_had(tmp_path):
    path = tmp_path / "long.mp4"
    gv = GrowingVideo(path, fps=16)
    gv.append(numbered_frames(5))
    with pytest.raises(ValueError, match="48x32"):
        gv.append(numbered_frames(3, h=16, w=16))
    assert gv.frames_written == 5 and probe(path).frames == 5
    assert GrowingVideo.open_existing(path).frames_written == 5
    assert [p.name for p in gv.parts_dir.glob("seg_*")] == ["seg_00000.mp4"]


def test_reopening_drops_a_segment_written_after_the_last_saved_state(tmp_path):
    path = tmp_path / "long.mp4"
    gv = GrowingVideo(path, fps=16)
    gv.append(numbered_frames(5))
    # a crash after the segment was encoded but before the state was saved
    write_mp4(numbered_frames(7), gv.parts_dir / "seg_00001.mp4", fps=16)
    again = GrowingVideo.open_existing(path)
    assert again.frames_written == 5 and probe(path).frames == 5
    again.append(numbered_frames(2, start=5))
    assert frame_ids(read_video(path)) == list(range(7))


def test_reopening_without_parts_is_a_user_error(tmp_path):
    path = write_mp4(numbered_frames(3), tmp_path / "done.mp4", fps=16)
    with pytest.raises(UserError) as e:
        GrowingVideo.open_existing(path)
    assert e.value.field == "video"


def test_a_new_growing_video_does_not_inherit_old_segments(tmp_path):
    path = tmp_path / "long.mp4"
    GrowingVideo(path, fps=16).append(numbered_frames(5))
    fresh = GrowingVideo(path, fps=16)
    fresh.append(numbered_frames(2))
    assert fresh.frames_written == 2 and probe(path).frames == 2


# ------------------------------------------------------------------------------------ metadata of any size

HUGE_PROMPT = ("一只猫在雪地里奔跑 = ; # \\ " * 12000)[:200_000]      # 200,000 characters, ~1 MB as escaped JSON


def test_a_200000_character_prompt_lands_in_the_mp4_and_reads_back(tmp_path):
    meta = {"prompt": HUGE_PROMPT, "seed": 1}
    path = write_mp4(numbered_frames(5), tmp_path / "big.mp4", fps=16, metadata=meta)
    assert read_metadata(path) == meta
    (tmp_path / "big.json").unlink()
    assert read_metadata(path) == meta          # the comment tag alone, past the 128 KiB argument limit
    assert files_in(tmp_path) == ["big.mp4"]    # the metadata file given to ffmpeg is gone


def test_a_growing_video_carries_a_200000_character_prompt(tmp_path):
    path = tmp_path / "long.mp4"
    gv = GrowingVideo(path, fps=16, metadata={"prompt": HUGE_PROMPT})
    gv.append(numbered_frames(5))
    gv.append(numbered_frames(4, start=5))
    (tmp_path / "long.json").unlink()
    assert read_metadata(path) == {"prompt": HUGE_PROMPT} and probe(path).frames == 9


def test_a_sidecar_left_from_before_the_video_was_replaced_is_not_believed(tmp_path):
    # A kill between the mp4's rename and the sidecar's leaves the new video beside the old sidecar.
    path = write_mp4(numbered_frames(9), tmp_path / "v.mp4", fps=16, metadata={"frames": 9})
    old_sidecar = (tmp_path / "v.json").read_text()
    write_mp4(numbered_frames(13), path, fps=16, metadata={"frames": 13})
    (tmp_path / "v.json").write_text(old_sidecar)
    assert read_metadata(path) == {"frames": 13}


def test_a_symlinked_sidecar_is_never_read(tmp_path):
    path = write_mp4(numbered_frames(3), tmp_path / "v.mp4", fps=16, metadata={"mine": 1})
    secret = tmp_path / "secret.json"
    secret.write_text('{"password": "hunter2"}')
    (tmp_path / "v.json").unlink()
    (tmp_path / "v.json").symlink_to(secret)
    assert read_metadata(path) == {"mine": 1}      # from the mp4's own tag, not the link's target
