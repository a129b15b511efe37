"""Jobs, not clicks: every GPU job a browser session starts gets its own id and cancel handle.

A job is registered when Generate is pressed (before it waits in Gradio's queue), claimed by id when its
turn comes, and finished when its stream ends. Stop cancels every job of the session, queued or running,
whatever was clicked since; a queued job that was stopped ends without loading anything when its turn
comes. Gradio's own cancel route (gradio_client's `Job.cancel()`) reaches the job through its event id.

One job per session at a time: a second Generate while one is queued or running is refused, so a
double click or the other tab's button cannot start a duplicate by accident.
"""
from __future__ import annotations

import itertools
import threading
import time
import uuid
from dataclasses import dataclass, field

KIND_LABELS = {"clip": "Text to Video", "i2v": "Image to Video", "extend": "Extend", "resume": "Resume"}


@dataclass
class Job:
    id: str
    session: str
    kind: str                          # clip | extend | resume
    seq: int                           # submission order, for the queue position
    cancel: threading.Event = field(default_factory=threading.Event)
    state: str = "queued"              # queued | running | done
    event_id: str | None = None        # Gradio's event id once the job runs
    created: float = field(default_factory=time.time)

    @property
    def active(self) -> bool:
        return self.state != "done"

    @property
    def label(self) -> str:
        return KIND_LABELS.get(self.kind, self.kind)


class Busy(Exception):
    def __init__(self, job: Job):
        self.job = job
        super().__init__(f"your {job.label} job is still {job.state}")


class Jobs:
    def __init__(self):
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._seq = itertools.count()
        # Event ids Gradio was asked to cancel: a cancel can arrive after Gradio started the event but
        # before its handler claimed the job; the claim then sees it (kept a while, then dropped).
        self._cancelled_events: dict[str, float] = {}
        # Sessions whose client cancelled before it knew its event id (gradio_client sends the cancel
        # with event_id None when the queue has not answered yet): the job that starts next is that one.
        self._cancelled_sessions: dict[str, float] = {}

    # ---- lifecycle ------------------------------------------------------------------------------
    def submit(self, session: str, kind: str) -> Job:
        """A new queued job for this session; Busy if the session already has one queued or running."""
        with self._lock:
            current = self._active(session)
            if current is not None:
                raise Busy(current)
            job = Job(uuid.uuid4().hex, session, kind, next(self._seq))
            self._jobs[job.id] = job
            return job

    def claim(self, job_id: str | None, session: str, kind: str, event_id: str | None = None) -> Job:
        """The job whose turn has come. A call without a registered job (an API client calls the run
        endpoint directly) is registered here, already running."""
        with self._lock:
            job = self._jobs.get(job_id) if job_id else None
            if job is None or job.session != session:
                job = Job(uuid.uuid4().hex, session, kind, next(self._seq))
                self._jobs[job.id] = job
            if job.state == "queued":
                job.state = "running"
            job.event_id = event_id
            if event_id and event_id in self._cancelled_events:
                job.cancel.set()
            marked = self._cancelled_sessions.pop(session, None)
            if marked is not None and time.time() - marked < self.EARLY_CANCEL_S:
                job.cancel.set()
            return job

    def finish(self, job: Job) -> None:
        with self._lock:
            job.state = "done"
            self._prune()

    # ---- stopping -------------------------------------------------------------------------------
    def stop(self, session: str) -> list[Job]:
        """Cancel every queued or running job of the session. Returns them (queued ones first end here)."""
        with self._lock:
            hit = [j for j in self._jobs.values() if j.session == session and j.active]
            for j in hit:
                j.cancel.set()
                if j.state == "queued":
                    j.state = "done"       # its turn will come and end at once; the session is free now
            return hit

    EARLY_CANCEL_S = 10.0

    def cancel_event(self, session: str | None, event_id: str | None) -> bool:
        """Gradio's cancel route: stop the job running for that event. Without an event id (the client
        cancelled before the queue answered it) it is the session's job: the one running or queued now,
        or else the next one to start."""
        with self._lock:
            now = time.time()
            if event_id:
                self._cancelled_events[event_id] = now
            self._cancelled_events = {e: t for e, t in self._cancelled_events.items() if now - t < 3600}
            for j in self._jobs.values():
                if j.active and event_id and j.event_id == event_id:
                    j.cancel.set()
                    return True
            mine = [j for j in self._jobs.values() if j.session == session and j.active
                    and (j.state == "queued" or not event_id)]
            for j in mine:
                j.cancel.set()
                if j.state == "queued":
                    j.state = "done"
            if not mine and not event_id and session:
                self._cancelled_sessions[session] = now
            return bool(mine)

    def forget(self, session: str) -> None:
        """The browser tab closed: nobody is waiting for its jobs any more."""
        self.stop(session)

    # ---- reading --------------------------------------------------------------------------------
    def get(self, job_id: str | None) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id) if job_id else None

    def active(self, session: str) -> Job | None:
        with self._lock:
            return self._active(session)

    def ahead(self, job: Job) -> int:
        """GPU jobs that run or wait before this one (all sessions)."""
        with self._lock:
            return sum(1 for j in self._jobs.values() if j.active and j.seq < job.seq)

    def _active(self, session: str) -> Job | None:
        return next((j for j in self._jobs.values() if j.session == session and j.active), None)

    def _prune(self, keep: int = 200) -> None:
        done = sorted((j for j in self._jobs.values() if not j.active), key=lambda j: j.seq)
        for j in done[:-keep] if len(done) > keep else []:
            del self._jobs[j.id]
