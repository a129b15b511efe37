"""Video files in and out: H.264 mp4s that play in browsers, with the generation settings inside.

Writing streams raw RGB frames into the ffmpeg binary that ships in the imageio-ffmpeg wheel, so RAM stays
flat however long the video is and no system ffmpeg is needed. Every file appears atomically (temp file in
the same folder, then os.replace): a crash, a Stop or a bad frame never leaves a half-written mp4 at the path
that the gallery, the journal or a browser could pick up.

Reading uses OpenCV (fast, in-process) and falls back to the ffmpeg binary for containers / codecs that
OpenCV's bundled decoder cannot open.
"""
from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError

# Visually lossless for generated content at a modest size: x264's crf 17-18 is the usual "can't tell
# it from the source" point; 18 keeps a 720p 81-frame clip at a few MB while the frames that the Extend
# feature re-reads as its overlap stay within a couple of code values of what the VAE decoded.
CRF = 18
PRESET = "medium"

# BT.709 conversion, *tagged* in the stream: browsers convert back with the matrix the stream names and
# assume 709 when it names none, so ffmpeg's historical default (BT.601, untagged) shifts colours on
# playback. The explicit scale filter keeps the conversion right on ffmpeg builds that do not derive it
# from the output tags. OpenCV and ffmpeg honour the tags, so frames round-trip through our reader too.
_COLOR_ARGS = ["-vf", "scale=out_color_matrix=bt709:out_range=tv",
               "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709",
               "-color_range", "tv"]

_VIDEO_FIX = "choose an mp4, webm, mov, mkv or avi file that plays in a video player"

log = logging.getLogger(__name__)

# Written into every sidecar: the byte size of the mp4 it describes. It tells a sidecar this app wrote from
# any other JSON that happens to have the same name (which is never overwritten), and a sidecar left from
# before the video was replaced (a kill between the two renames) from a current one.
STAMP_KEY = "_video_bytes"
# Sidecars written by versions before STAMP_KEY carry the app's name instead.
APP_MARKER = ("app", "wan-studio")
# Our sidecars are a few KB, a few MB with an enormous prompt; anything bigger is not one of ours.
MAX_SIDECAR_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    width: int
    height: int
    fps: float
    seconds: float


def ffmpeg_exe() -> str:
    import imageio_ffmpeg
    return imageio_ffmpeg.get_ffmpeg_exe()


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the JSON copy of a video's metadata lives: `clip.mp4` -> `clip.json`."""
    return Path(path).with_suffix(".json")


# ---------------------------------------------------------------------------------------------- writing

def write_mp4(frames, path: str | os.PathLike, fps: float, metadata: dict | None = None) -> Path:
    """Encode uint8 RGB frames ([F,H,W,3] array, or an iterable of [H,W,3] frames / [N,H,W,3] batches)
    to an H.264 mp4 at `path`, atomically; `metadata` goes into the mp4's comment tag and `<name>.json`.

    Refused up front (UserError "out"): a `<name>.json` that this app did not write. A full disk or an
    ffmpeg failure is a UserError too, and leaves neither a partial file nor a changed one."""
    path = Path(path)
    _check_fps(fps)
    meta_json = _metadata_json(metadata)
    side = sidecar_path(path)
    _check_sidecar(path)
    _mkdir(path.parent)
    tmp = _tmp_name(path)
    side_tmp = None
    try:
        _encode(frames, tmp, fps, meta_json)
        if metadata is not None:
            # staged before the video lands, so both appear together; the stamp ties it to this video
            side_tmp = _write_text_tmp(side, _sidecar_text(metadata, tmp.stat().st_size))
        os.replace(tmp, path)
        if side_tmp is not None:
            os.replace(side_tmp, side)
            side_tmp = None
        elif side.exists():
            side.unlink()   # our sidecar from an earlier file at this path would describe the wrong video
    except OSError as e:
        raise _write_failed(path, e) from None
    finally:
        _unlink_quiet(tmp)
        if side_tmp is not None:
            _unlink_quiet(side_tmp)
    return path


def check_output_path(path: str | os.PathLike) -> Path:
    """Refuse, before any work, an output path whose writing would destroy something this app did not
    make: a name that is not `.mp4`, a folder or special file at the path, a `<name>.json` that is not
    our sidecar (e.g. `--out settings.mp4` beside the app's settings.json), or a `<name>.parts/` folder
    that is not our segments. Returns the path."""
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise UserError("out", f"{path.name} does not end in .mp4", "name the video like clip.mp4")
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise UserError("out", f"{path} exists and is not a video file", "choose another name for the video")
    except (FileNotFoundError, NotADirectoryError):
        pass
    _check_sidecar(path)
    _check_parts(path)
    return path


def _check_sidecar(video: Path) -> None:
    side = sidecar_path(video)
    if side == video:
        raise UserError("out", f"{video.name} is a .json name", "name the video like clip.mp4")
    if _sidecar_owner(side) == "foreign":
        raise UserError("out", f"{side} exists and was not written by this app; the video's settings "
                        "would overwrite it", "choose another name for the video, or move that file")


def _sidecar_owner(side: Path) -> str:
    """'none' (nothing there), 'ours' (a sidecar this app wrote) or 'foreign' (anything else)."""
    try:
        st = os.lstat(side)
    except (FileNotFoundError, NotADirectoryError):
        return "none"         # (a missing folder on the way is reported when it cannot be created)
    except OSError:
        return "foreign"
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SIDECAR_BYTES:
        return "foreign"      # a symlink, a folder, a FIFO or a huge file: not something we wrote
    data = _read_json_file(side)
    if isinstance(data, dict) and (STAMP_KEY in data or data.get(APP_MARKER[0]) == APP_MARKER[1]):
        return "ours"
    return "foreign"


def _check_parts(video: Path) -> None:
    """A `<name>.parts/` folder is deleted when a growing video starts; only ours may be."""
    folder = parts_dir(video)
    if not os.path.lexists(folder):
        return
    ours = folder.is_dir() and not folder.is_symlink() and all(
        p.name in (GrowingVideo.STATE, "concat.txt") or re.fullmatch(r"seg_\d{5}\.mp4", p.name)
        or (p.name.startswith(".") and p.name.endswith(".partial")) for p in folder.iterdir())
    if not ours:
        raise UserError("out", f"{folder} exists and is not this app's segments folder",
                        "choose another name for the video, or move that folder")


def _sidecar_text(metadata: dict, video_bytes: int) -> str:
    return json.dumps({**metadata, STAMP_KEY: video_bytes}, ensure_ascii=False, indent=2)


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_failed(folder, e) from None


def _write_failed(path: Path, e: OSError) -> UserError:
    """An OSError while writing, as one message without a traceback or raw ffmpeg text."""
    if e.errno == errno.ENOSPC:
        return UserError("out", f"could not write {path.name}: the disk is full",
                         "free some space on that drive or choose another outputs folder; nothing was saved")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError("out", f"could not write {path.name}: {path.parent} is not writable",
                         "choose another outputs folder; nothing was saved")
    return UserError("out", f"could not write {path.name}: {e.strerror or type(e).__name__}",
                     "check that the outputs folder exists and has free space; nothing was saved")


def _encode_atomic(frames, path: Path, fps: float, meta_json: str | None) -> tuple[int, int, int]:
    """Encode into a temp file next to `path`, then os.replace. Returns (frames, width, height) as given."""
    tmp = _tmp_name(path)
    try:
        shape = _encode(frames, tmp, fps, meta_json)
        os.replace(tmp, path)
        return shape
    except OSError as e:
        raise _write_failed(path, e) from None
    finally:
        _unlink_quiet(tmp)


def _ffpath(p: Path) -> str:
    # "file:" so that a name such as "concat:x.mp4" or "pipe:1" is never read as an ffmpeg protocol
    return "file:" + os.fspath(p)


def _ffmetadata_tmp(out: Path, meta_json: str) -> Path:
    """The metadata as an FFMETADATA1 file for `-map_metadata`: a command line is limited (128 KiB per
    argument on Linux), a file is not, so a 200,000-character prompt still lands in the mp4."""
    def esc(v: str) -> str:
        return re.sub(r"([=;#\\\n])", r"\\\1", v)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.ffmeta.partial")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(";FFMETADATA1\ncomment=" + esc(meta_json) + "\n")
    return tmp


def _metadata_args(out: Path, meta_json: str | None, input_index: int) -> tuple[list[str], list[str], Path | None]:
    """(input args, output args, temp file) that put `meta_json` into the mp4's comment tag."""
    if meta_json is None:
        return [], [], None
    meta = _ffmetadata_tmp(out, meta_json)
    return ["-f", "ffmetadata", "-i", _ffpath(meta)], ["-map_metadata", str(input_index)], meta


def _ffmpeg_failed(out: Path, rc: int, stderr: str) -> Exception:
    log.info("ffmpeg failed writing %s (exit %s): %s", out, rc, stderr[-2000:])   # for the server log only
    low = stderr.lower()
    if "no space left" in low:
        return UserError("out", f"could not write {_final_name(out)}: the disk is full",
                         "free some space on that drive or choose another outputs folder; nothing was saved")
    if "permission denied" in low or "read-only file system" in low:
        return UserError("out", f"could not write {_final_name(out)}: {out.parent} is not writable",
                         "choose another outputs folder; nothing was saved")
    if "file too large" in low:
        return UserError("out", f"could not write {_final_name(out)}: the file system's file size limit was reached",
                         "choose an outputs folder on another drive (FAT32 stops at 4 GB); nothing was saved")
    return UserError("out", f"the video encoder (ffmpeg) failed writing {_final_name(out)} (exit {rc})",
                     "nothing was saved; the log has ffmpeg's own message")


def _final_name(tmp: Path) -> str:
    m = re.fullmatch(r"\.(.+)\.[0-9a-f]{8}\.partial", tmp.name)
    return m.group(1) if m else tmp.name


def _encode(frames, out: Path, fps: float, meta_json: str | None) -> tuple[int, int, int]:
    chunks = _chunks(frames)
    try:
        first = next(chunks)
    except StopIteration:
        raise ValueError("write_mp4: no frames to write") from None
    h, w = first.shape[1:3]
    # yuv420p stores colour at half resolution in both directions, so x264 refuses odd sizes; the last
    # row/column is repeated (not black-padded, not resized) so the picture is unchanged and no seam shows.
    pad_h, pad_w = h % 2, w % 2
    meta_in, meta_out, meta_file = _metadata_args(out, meta_json, 1)
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w + pad_w}x{h + pad_h}",
           "-framerate", _rate(fps), "-i", "-", *meta_in, "-map", "0:v:0", *meta_out,
           *_COLOR_ARGS, "-c:v", "libx264", "-preset", PRESET, "-crf", str(CRF), "-pix_fmt", "yuv420p",
           "-movflags", "+faststart", "-f", "mp4", _ffpath(out)]
    count = 0
    try:
        with tempfile.TemporaryFile() as err:   # a file, not a pipe: ffmpeg can never block on stderr
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
            try:
                chunk = first
                while chunk is not None:
                    if chunk.shape[1:3] != (h, w):
                        raise ValueError(f"write_mp4: frame {count} is {chunk.shape[2]}x{chunk.shape[1]}, "
                                         f"the video is {w}x{h}")
                    if pad_h or pad_w:
                        chunk = np.pad(chunk, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
                    try:
                        proc.stdin.write(np.ascontiguousarray(chunk).tobytes())
                    except BrokenPipeError:
                        break   # ffmpeg died; its message is read below
                    count += len(chunk)
                    chunk = next(chunks, None)
                try:
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
                rc = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            if rc != 0:
                err.seek(0)
                raise _ffmpeg_failed(out, rc, err.read().decode(errors="replace").strip())
    finally:
        if meta_file is not None:
            _unlink_quiet(meta_file)
    return count, w, h


def _chunks(frames) -> Iterator[np.ndarray]:
    """Yield [N,H,W,3] uint8 batches from an array or an iterable of frames / batches, checking each."""
    if isinstance(frames, np.ndarray):
        frames = [frames] if frames.ndim == 4 else [frames[None]] if frames.ndim == 3 else [frames]
    for i, a in enumerate(frames):
        a = np.asarray(a)
        if a.ndim == 3:
            a = a[None]
        if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8:
            raise ValueError(f"write_mp4: item {i} has shape {a.shape} dtype {a.dtype}; "
                             "expected uint8 RGB [H,W,3] or [N,H,W,3]")
        if len(a):
            yield a


def _check_fps(fps) -> None:
    if not isinstance(fps, (int, float)) or not math.isfinite(fps) or not 0 < fps <= 1000:
        raise ValueError(f"fps must be a positive number, got {fps!r}")


def _rate(fps: float) -> str:
    """fps as ffmpeg reads it exactly: '16', or a fraction such as '30000/1001' for 29.97."""
    from fractions import Fraction
    f = Fraction(fps).limit_denominator(1001)
    return f"{f.numerator}/{f.denominator}"


def _metadata_json(metadata: dict | None) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise TypeError("metadata must be a dict")
    # ASCII-only in the tag: it travels through ffmetadata escaping and any container's tag encoding unharmed.
    return json.dumps(metadata, ensure_ascii=True, separators=(",", ":"))


def _tmp_name(path: Path) -> Path:
    # Hidden and without the final suffix, so no listing of outputs ever shows a file being written.
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")


def _write_text_tmp(path: Path, text: str) -> Path:
    tmp = _tmp_name(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _unlink_quiet(tmp)
        raise
    return tmp


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_text_tmp(path, text)
    try:
        os.replace(tmp, path)
    finally:
        _unlink_quiet(tmp)


def _unlink_quiet(p: Path) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------------------------------------- metadata

def read_metadata(path: str | os.PathLike) -> dict | None:
    """The generation settings of one of our videos: the sidecar JSON, else the mp4's comment tag.
    None for a video that carries no metadata of ours. A sidecar is used only if it is a regular file
    (never a symlink, which could point anywhere) and describes the mp4 that is there now."""
    path = Path(path)
    side = sidecar_path(path)
    data = _read_json_file(side)
    if isinstance(data, dict):
        stamp = data.pop(STAMP_KEY, None)
        try:
            current = stamp is None or os.stat(path).st_size == stamp
        except OSError:
            current = True      # the sidecar outlived its video: still the best description there is
        if current:
            return data
        # else: the video was replaced after this sidecar (a kill between the two renames); the mp4's own
        # tag was written in the same ffmpeg run as its frames, so it is the truth
    if not path.is_file():
        return None
    r = subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", _ffpath(path),
                        "-f", "ffmetadata", "-"], capture_output=True)
    if r.returncode != 0:
        return None
    comment = _ffmetadata_global(r.stdout.decode("utf-8", errors="replace")).get("comment")
    if comment is None:
        return None
    try:
        data = json.loads(comment)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _read_json_file(path: Path):
    """The JSON in a regular file of at most MAX_SIDECAR_BYTES, else None (missing, a symlink, damaged)."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SIDECAR_BYTES:
            return None
        with open(path, "rb") as f:
            return json.loads(f.read(MAX_SIDECAR_BYTES + 1).decode("utf-8-sig"))
    except (OSError, ValueError, RecursionError):
        return None   # a damaged sidecar is not fatal: the mp4 carries its own copy


def _ffmetadata_global(text: str) -> dict[str, str]:
    """Parse the global section of ffmpeg's ffmetadata format: `key=value` lines where `=`, `;`, `#`,
    `\\` and newlines inside values are escaped with a backslash."""
    out: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.startswith("["):
            break   # a [STREAM] / [CHAPTER] section: not the file's own tags
        if not line or line.startswith((";", "#")):
            continue
        # a value whose last char is an unescaped backslash continues on the next line
        while _ends_with_escape(line) and i < len(lines):
            line = line + "\n" + lines[i]
            i += 1
        key, value = _split_unescaped(line)
        if key is not None:
            out[_unescape(key)] = _unescape(value)
    return out


def _ends_with_escape(s: str) -> bool:
    n = len(s) - len(s.rstrip("\\"))
    return n % 2 == 1


def _split_unescaped(line: str) -> tuple[str | None, str]:
    j = 0
    while j < len(line):
        if line[j] == "\\":
            j += 2
            continue
        if line[j] == "=":
            return line[:j], line[j + 1:]
        j += 1
    return None, ""


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s, flags=re.S)


# ---------------------------------------------------------------------------------------------- reading

def probe(path: str | os.PathLike) -> VideoInfo:
    """Frame count, size and fps of any readable video. The count is exact: packets are counted by
    demuxing the whole stream (no decoding), because header counts are missing or estimated from the
    duration in many containers (webm, mkv, avi)."""
    path = _existing_video(path)
    width, height, fps = _size_and_fps(path)
    r = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostats", "-loglevel", "error", "-i", str(path),
                        "-map", "0:v:0", "-c", "copy", "-f", "null", "-", "-progress", "pipe:1"],
                       capture_output=True, text=True, errors="replace")
    counts = re.findall(r"^frame=(\d+)", r.stdout, flags=re.M)
    frames = int(counts[-1]) if r.returncode == 0 and counts else _decode_count(path)
    if frames <= 0:
        raise UserError("video", f"{path.name} has no video frames", _VIDEO_FIX)
    return VideoInfo(frames=frames, width=width, height=height, fps=fps,
                     seconds=frames / fps if fps > 0 else 0.0)


def _size_and_fps(path: Path) -> tuple[int, int, float]:
    import cv2
    cap = cv2.VideoCapture(str(path))
    try:
        if cap.isOpened():
            ok, frame = cap.read()
            if ok and frame is not None:
                # Size from a decoded frame, so it agrees with read_video even for rotated phone clips.
                return frame.shape[1], frame.shape[0], float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        cap.release()
    w, h, fps = _ffmpeg_stream_info(path)
    return w, h, fps


def _decode_count(path: Path) -> int:
    return sum(len(c) for c in _decode(path))


def read_video(path: str | os.PathLike, width: int | None = None, height: int | None = None,
               fps: float | None = None, max_frames: int | None = None,
               last_frames: int | None = None) -> np.ndarray:
    """Frames of a video as uint8 RGB [F,H,W,3].

    width and height: scale to cover that size keeping the aspect ratio, then center-crop (one of them
    alone scales proportionally). fps: resample by taking, for each output timestamp, the nearest source
    frame. max_frames: stop after that many output frames. last_frames: keep only the last N output frames,
    holding no more than N in memory."""
    for name, v in (("max_frames", max_frames), ("last_frames", last_frames)):
        if v is not None and (not isinstance(v, int) or v < 1):
            raise ValueError(f"read_video: {name} must be a positive int, got {v!r}")
    path = _existing_video(path)
    frames = iter_video(path, width, height, fps)
    kept: deque | list = deque(maxlen=last_frames) if last_frames else []
    n = 0
    for f in frames:
        kept.append(f)
        n += 1
        if max_frames is not None and n >= max_frames:
            break
    if not kept:
        raise UserError("video", f"{path.name} has no video frames", _VIDEO_FIX)
    return np.stack(list(kept))


def iter_video(path: str | os.PathLike, width: int | None = None, height: int | None = None,
               fps: float | None = None) -> Iterator[np.ndarray]:
    """The frames read_video returns, one at a time (decode → fps resample → fit), so a long video
    never sits in RAM. Raises UserError("video") for a missing file; an unreadable one fails when
    iterated, like read_video."""
    path = _existing_video(path)
    for name, v in (("width", width), ("height", height)):
        if v is not None and (not isinstance(v, int) or v < 1):
            raise ValueError(f"read_video: {name} must be a positive int, got {v!r}")
    if fps is not None:
        _check_fps(fps)
    src_fps = _size_and_fps(path)[2] if fps is not None else None
    frames = _decode(path)
    if fps is not None and src_fps and src_fps > 0:
        frames = _resample(frames, src_fps, fps)
    # A source without a usable frame rate is taken to be at the requested rate already.
    return (_fit(f, width, height) for f in frames)


def _existing_video(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError("video", f"{path} does not exist or is not a file", _VIDEO_FIX)
    return path


def _decode(path: Path) -> Iterator[np.ndarray]:
    """RGB frames [H,W,3], one at a time: OpenCV first, the ffmpeg binary if OpenCV cannot read it."""
    import cv2
    cap = cv2.VideoCapture(str(path))
    try:
        ok, frame = (cap.read() if cap.isOpened() else (False, None))
        if ok and frame is not None:
            while ok:
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                ok, frame = cap.read()
            return
    finally:
        cap.release()
    yield from _decode_ffmpeg(path)


def _ffmpeg_stream_info(path: Path) -> tuple[int, int, float]:
    """Width, height and fps from ffmpeg's description of the first video stream (no ffprobe ships in
    the imageio-ffmpeg wheel, so its banner is parsed)."""
    r = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True,
                       errors="replace")
    for line in r.stderr.splitlines():
        if "Stream #" in line and "Video:" in line:
            size = re.search(r"[ ,](\d{1,5})x(\d{1,5})[ ,\[]", line + " ")
            rate = re.search(r"([\d.]+)(k?) fps", line) or re.search(r"([\d.]+)(k?) tbr", line)
            if size:
                fps = float(rate.group(1)) * (1000 if rate.group(2) else 1) if rate else 0.0
                return int(size.group(1)), int(size.group(2)), fps
    raise UserError("video", f"{path.name} cannot be read as a video", _VIDEO_FIX)


def _decode_ffmpeg(path: Path) -> Iterator[np.ndarray]:
    w, h, _ = _ffmpeg_stream_info(path)
    # -fps_mode passthrough: every decoded frame exactly once, none duplicated or dropped to fit a rate
    proc = subprocess.Popen([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(path),
                             "-map", "0:v:0", "-fps_mode", "passthrough",
                             "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    size = w * h * 3
    try:
        while True:
            buf = proc.stdout.read(size)
            if len(buf) < size:
                break
            yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)
    finally:
        proc.kill()
        proc.wait()


def _resample(frames: Iterator[np.ndarray], src_fps: float, dst_fps: float) -> Iterator[np.ndarray]:
    """Output frame k shows the source frame nearest to time k/dst_fps, i.e. index round(k*src/dst);
    a frame is repeated when slowing down and skipped when speeding up."""
    ratio = src_fps / dst_fps
    k = 0
    for i, f in enumerate(frames):
        # floor(x + 0.5): halves round up, never to even, so the choice does not flip between frames
        while math.floor(k * ratio + 0.5 + 1e-9) == i:
            yield f
            k += 1


def _fit(frame: np.ndarray, width: int | None, height: int | None) -> np.ndarray:
    import cv2
    h, w = frame.shape[:2]
    if width is None and height is None:
        return frame
    if width is None or height is None:
        s = width / w if width is not None else height / h
        width, height = width or max(1, round(w * s)), height or max(1, round(h * s))
    if (w, h) == (width, height):
        return frame
    # cover: the scale that fills the whole target; crop the source first so only kept pixels are resized
    s = max(width / w, height / h)
    cw, ch = min(w, round(width / s)), min(h, round(height / s))
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    crop = frame[y0:y0 + ch, x0:x0 + cw]
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    return cv2.resize(crop, (width, height), interpolation=interp)


# ---------------------------------------------------------------------------------------------- growing

class GrowingVideo:
    """An mp4 that grows by appends (Extend writes one window at a time) and is complete after each.

    Design: each append is encoded once into its own segment, `<name>.parts/seg_00000.mp4`, ...; then
    `path` is rebuilt from all segments with ffmpeg's concat demuxer and stream copy. Earlier frames are
    never decoded or re-encoded (no generation loss, no growing RAM), every segment starts with a keyframe
    so the joins are clean, and `path` is replaced atomically, so a browser, the gallery or a crash always
    sees a whole playable file. The price is re-copying the bytes of earlier segments on each append
    (linear I/O per append), which is small next to the minutes a window takes to generate. The parts
    folder plus `state.json` is what `open_existing` resumes from after a restart; `discard_parts()`
    removes it when the video is final.
    """

    STATE = "state.json"

    def __init__(self, path: str | os.PathLike, fps: float, metadata: dict | None = None):
        """Start a new growing video at `path` (segments left there by an earlier video are removed;
        use `open_existing` to continue one)."""
        self._setup(path, fps, metadata)
        _check_sidecar(self.path)
        _check_parts(self.path)          # it is deleted next: only if it holds nothing but our segments
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        _mkdir(self.parts_dir)

    def _setup(self, path, fps, metadata) -> None:
        _check_fps(fps)
        self.path = Path(path)
        self.fps = fps
        self.metadata = metadata
        self._segments: list[dict] = []    # {"file": name, "frames": n}
        self._size: tuple[int, int] | None = None   # (width, height) as given, before even padding

    @property
    def parts_dir(self) -> Path:
        return parts_dir(self.path)

    @property
    def frames_written(self) -> int:
        return sum(s["frames"] for s in self._segments)

    @property
    def segments(self) -> int:
        return len(self._segments)

    @classmethod
    def open_existing(cls, path: str | os.PathLike) -> "GrowingVideo":
        """Continue a growing video after a restart, from its parts folder."""
        path = Path(path)
        state_file = parts_dir(path) / cls.STATE
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
            gv = cls.__new__(cls)
            gv._setup(path, state["fps"], state.get("metadata"))
            gv._segments = [{"file": str(s["file"]), "frames": int(s["frames"])} for s in state["segments"]]
            gv._size = tuple(state["size"]) if state.get("size") else None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError("video", f"cannot continue {path.name}: its parts folder is missing or damaged "
                            f"({e.__class__.__name__})", "start a new video") from None
        missing = [s["file"] for s in gv._segments if not (gv.parts_dir / s["file"]).is_file()]
        if missing:
            raise UserError("video", f"cannot continue {path.name}: segment {missing[0]} is missing",
                            "start a new video")
        # Segments written after the last saved state (a crash mid-append) are not part of the video.
        known = {s["file"] for s in gv._segments} | {cls.STATE}
        for p in gv.parts_dir.iterdir():
            if p.name not in known:
                _unlink_quiet(p) if p.is_file() else shutil.rmtree(p, ignore_errors=True)
        if gv._segments:
            gv._rebuild()   # the crash may have come between saving the state and rebuilding `path`
        return gv

    def append(self, frames, metadata: dict | None = None) -> int:
        """Add frames; afterwards `path` plays everything so far. Returns the frames added.
        `metadata` (optional) replaces the metadata stored with the video."""
        if metadata is not None:
            self.metadata = metadata
        seg = self.parts_dir / f"seg_{len(self._segments):05d}.mp4"
        checked = self._same_size(_chunks(frames))
        n, w, h = _encode_atomic(checked, seg, self.fps, None)
        self._size = (w, h)
        self._segments.append({"file": seg.name, "frames": n})
        try:
            self._save_state()
            self._rebuild()
        except BaseException:
            self._segments.pop()
            _unlink_quiet(seg)
            self._save_state()
            raise
        return n

    def discard_parts(self) -> None:
        """Delete the segments once the video is final (it can no longer be continued)."""
        shutil.rmtree(self.parts_dir, ignore_errors=True)

    def _same_size(self, chunks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        # The concat demuxer copies streams as they are, so every segment must have the same size.
        for c in chunks:
            if self._size is not None and (c.shape[2], c.shape[1]) != tuple(self._size):
                raise ValueError(f"GrowingVideo: frames are {c.shape[2]}x{c.shape[1]}, "
                                 f"the video is {self._size[0]}x{self._size[1]}")
            yield c

    def _save_state(self) -> None:
        state = {"fps": self.fps, "metadata": self.metadata, "size": self._size,
                 "segments": self._segments}
        write_text_atomic(self.parts_dir / self.STATE, json.dumps(state, ensure_ascii=False))

    def _rebuild(self) -> None:
        listing = self.parts_dir / "concat.txt"
        # concat demuxer syntax: one `file '...'` per line, single quotes escaped as '\''
        write_text_atomic(listing, "".join(
            "file '" + s["file"].replace("'", "'\\''") + "'\n" for s in self._segments))
        tmp = _tmp_name(self.path)
        meta_in, meta_out, meta_file = _metadata_args(tmp, _metadata_json(self.metadata), 1)
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0",
               "-i", _ffpath(listing), *meta_in, "-map", "0:v:0", *meta_out, "-c", "copy",
               "-movflags", "+faststart", "-f", "mp4", _ffpath(tmp)]
        side = sidecar_path(self.path)
        side_tmp = None
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
            if r.returncode != 0:
                raise _ffmpeg_failed(tmp, r.returncode, r.stderr.strip())
            if self.metadata is not None:
                side_tmp = _write_text_tmp(side, _sidecar_text(self.metadata, tmp.stat().st_size))
            os.replace(tmp, self.path)
            if side_tmp is not None:
                os.replace(side_tmp, side)
                side_tmp = None
            elif side.exists() and _sidecar_owner(side) == "ours":
                side.unlink()
        except OSError as e:
            raise _write_failed(self.path, e) from None
        finally:
            _unlink_quiet(tmp)
            if meta_file is not None:
                _unlink_quiet(meta_file)
            if side_tmp is not None:
                _unlink_quiet(side_tmp)


def parts_dir(path: str | os.PathLike) -> Path:
    """`outputs/2025-01-01/clip.mp4` keeps its segments in `outputs/2025-01-01/clip.parts/`."""
    path = Path(path)
    return path.with_name(path.stem + ".parts")
