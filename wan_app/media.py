"""Video files in and out: H.264 mp4s that play in browsers, with the generation settings inside.

Writing streams raw RGB frames into the ffmpeg binary that ships in the imageio-ffmpeg wheel, so RAM stays
flat however long the video is and no system ffmpeg is needed. Every file appears atomically (temp file in
the same folder, then os.replace): a crash, a Stop or a bad frame never leaves a half-written mp4 at the path
that the gallery, the journal or a browser could pick up.

Reading uses OpenCV (fast, in-process) and falls back to the ffmpeg binary for containers / codecs that
OpenCV's bundled decoder cannot open.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
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
    to an H.264 mp4 at `path`, atomically; `metadata` goes into the mp4's comment tag and `<name>.json`."""
    path = Path(path)
    _check_fps(fps)
    meta_json = _metadata_json(metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    side = sidecar_path(path)
    side_tmp = None
    try:
        if metadata is not None:
            # The sidecar is staged first so that both files land together, right after the video.
            side_tmp = _write_text_tmp(side, json.dumps(metadata, ensure_ascii=False, indent=2))
        _encode_atomic(frames, path, fps, meta_json)
        if side_tmp is not None:
            os.replace(side_tmp, side)
            side_tmp = None
        elif side.exists():
            side.unlink()   # a sidecar from an earlier file at this path would describe the wrong video
    finally:
        if side_tmp is not None:
            _unlink_quiet(side_tmp)
    return path


def _encode_atomic(frames, path: Path, fps: float, meta_json: str | None) -> tuple[int, int, int]:
    """Encode into a temp file next to `path`, then os.replace. Returns (frames, width, height) as given."""
    tmp = _tmp_name(path)
    try:
        shape = _encode(frames, tmp, fps, meta_json)
        os.replace(tmp, path)
        return shape
    finally:
        _unlink_quiet(tmp)


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
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w + pad_w}x{h + pad_h}",
           "-framerate", _rate(fps), "-i", "-",
           *_COLOR_ARGS, "-c:v", "libx264", "-preset", PRESET, "-crf", str(CRF), "-pix_fmt", "yuv420p",
           "-movflags", "+faststart"]
    if meta_json is not None:
        cmd += ["-metadata", f"comment={meta_json}"]
    cmd += ["-f", "mp4", str(out)]
    count = 0
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
            raise RuntimeError(f"ffmpeg failed writing {out.name} (exit {rc}): "
                               + err.read().decode(errors="replace").strip()[-2000:])
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
    # ASCII-only in the tag: it travels through a command line and ffmetadata escaping unharmed.
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
    None for a video that carries no metadata of ours."""
    path = Path(path)
    side = sidecar_path(path)
    if side.is_file():
        try:
            data = json.loads(side.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                return data
        except (OSError, ValueError):
            pass   # a damaged sidecar is not fatal: the mp4 carries its own copy
    if not path.is_file():
        return None
    r = subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(path),
                        "-f", "ffmetadata", "-"], capture_output=True)
    if r.returncode != 0:
        return None
    comment = _ffmetadata_global(r.stdout.decode("utf-8", errors="replace")).get("comment")
    if comment is None:
        return None
    try:
        data = json.loads(comment)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


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
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        self.parts_dir.mkdir(parents=True)

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
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0",
               "-i", str(listing), "-map", "0:v:0", "-c", "copy", "-movflags", "+faststart"]
        meta_json = _metadata_json(self.metadata)
        if meta_json is not None:
            cmd += ["-metadata", f"comment={meta_json}"]
        cmd += ["-f", "mp4", str(tmp)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
            if r.returncode != 0:
                raise RuntimeError(f"ffmpeg failed joining segments of {self.path.name}: "
                                   + r.stderr.strip()[-2000:])
            os.replace(tmp, self.path)
        finally:
            _unlink_quiet(tmp)
        side = sidecar_path(self.path)
        if self.metadata is not None:
            write_text_atomic(side, json.dumps(self.metadata, ensure_ascii=False, indent=2))
        elif side.exists():
            side.unlink()


def parts_dir(path: str | os.PathLike) -> Path:
    """`outputs/2025-01-01/clip.mp4` keeps its segments in `outputs/2025-01-01/clip.parts/`."""
    path = Path(path)
    return path.with_name(path.stem + ".parts")
