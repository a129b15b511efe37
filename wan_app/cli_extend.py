"""`python app.py extend`: make a video longer, window by window, or continue an interrupted long video."""
from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from .cli import (install_sigint, add_common, add_overrides, add_request_args, consume, make_engine,
                  request_from)
from .errors import UserError


def add_extend_command(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "extend", help="add frames to a video (any common format), or continue an interrupted long video",
        description="Continue a video with new windows that start from its last frames. Works with the "
                    "text-to-video models too. One prompt line per window; the last line repeats. "
                    "A stopped or crashed run keeps the finished windows: continue it with --resume.")
    p.add_argument("--video", type=Path, default=None, help="the video to extend (mp4, webm, mov, mkv, avi…)")
    p.add_argument("--resume", type=Path, default=None, metavar="OUT.mp4",
                   help="continue this unfinished long video (its .journal.json lies beside it); "
                        "the settings come from the journal")
    p.add_argument("--list", action="store_true", help="list the unfinished long videos and exit")
    # --model and --prompt come from the journal with --resume; they are checked in cmd_extend instead.
    add_request_args(p, "frames to add to the video", required=False,
                     prompt_help="what the video shows; one line per window, the last line repeats")
    add_common(p)
    p.add_argument("--window", type=int, default=None,
                   help="frames per window, 4n+1 (default: the model's training length, if it fits)")
    p.add_argument("--overlap", type=int, default=None, help="frames shared with what exists, 4m+1 (default: 5)")
    p.add_argument("--color-match", type=float, default=1.0, metavar="S",
                   help="colour drift correction strength, 0 (off) to 1 (default: 1)")
    p.add_argument("--out", default=None, help="output .mp4 path (default: a new file in the outputs folder)")
    p.add_argument("--quiet", action="store_true", help="only print the result")
    add_overrides(p)
    p.set_defaults(func=cmd_extend)
    return p


_RESUME_IGNORES = ("model", "prompt", "negative_prompt", "size", "frames", "steps", "shift", "guidance",
                   "guidance_2", "boundary", "seed", "fps", "window", "overlap", "video")


def cmd_extend(args) -> int:
    from .longvideo import LongRequest, list_resumable
    if args.list:
        jobs = list_resumable(args.outputs_dir or "outputs")
        for j in jobs:
            print(f"{j.path}  {j.frames_done}/{j.frames_total} frames  {j.updated:%Y-%m-%d %H:%M}  "
                  f"{j.prompt.splitlines()[0][:60] if j.prompt else ''}")
        if not jobs:
            print("no unfinished long videos", file=sys.stderr)
        return 0
    cancel = threading.Event()
    if args.resume is not None:
        given = [name for name in _RESUME_IGNORES if getattr(args, name, None) not in (None, False)]
        if given:
            raise UserError("resume", "continues with the settings in its journal, so "
                            + ", ".join("--" + g.replace("_", "-") for g in given) + " would be ignored",
                            "leave them out, or start a new extend without --resume")
        engine = make_engine(args)
        install_sigint(cancel)
        return consume(engine.resume(args.resume, cancel),
                       args.quiet)
    if args.video is not None and args.model is None:
        args.model = _model_of(args.video)
    missing = [flag for flag, v in (("--video", args.video), ("--model", args.model),
                                    ("--prompt", args.prompt), ("--frames", args.frames)) if v is None]
    if missing:
        raise UserError("extend", "needs " + ", ".join(missing),
                        "e.g. extend --video in.mp4 --prompt '…' --frames 80 (the model comes from the "
                        "video's settings when the app made it; else add --model), or extend --resume OUT.mp4")
    engine = make_engine(args)
    install_sigint(cancel)
    lreq = LongRequest(base=request_from(args), total_frames=args.frames, window=args.window,
                       overlap=args.overlap, color_match=args.color_match, input_video=args.video)
    return consume(engine.run(lreq, cancel=cancel, out_path=Path(args.out) if args.out else None), args.quiet)


def _model_of(video: Path) -> str | None:
    """The model a video made by this app was generated with (from its metadata), else None."""
    from . import catalog
    from .media import read_metadata
    try:
        meta = read_metadata(video) or {}
    except (OSError, UserError):
        return None
    model = meta.get("model")
    return model if model in catalog.MODELS else None
