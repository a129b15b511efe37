"""The page-level state of one visit and the wiring that turns a Generate button into a job.

A Generate click runs three events:
1. `submit` (validated first: a field that is wrong is marked at the field, and nothing is queued)
   registers a job for this session and shows it as queued, with its place in the line;
2. `run` (the GPU queue, one at a time) claims that job by id, streams its events through the tab's
   RunView, and ends it; API clients call this one directly (`/generate`, `/extend`, `/resume`);
3. `idle` puts the buttons back.
Stop cancels the session's job, whichever tab and button started it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator

import gradio as gr

from .common import GPU, LIGHT, AppContext, session_of
from .jobs import Busy, Job
from .render import EMPTY, RunView, status_html

log = logging.getLogger(__name__)


def _event_id() -> str | None:
    """Gradio's id for the event being handled. Gradio keeps it in a context variable (what gr.Info and
    gr.Progress use); the public gr.Request does not carry it. Needed so that Gradio's cancel route
    (gradio_client's Job.cancel) reaches the job that runs for that event."""
    try:
        from gradio.context import LocalContext
        return LocalContext.event_id.get(None)
    except Exception:  # noqa: BLE001 - without it only the session's Stop reaches the job
        return None


@dataclass
class Runner:
    """A button that starts GPU jobs of one kind, and the view its jobs render into."""
    kind: str
    button: gr.Button
    idle_label: str
    view: RunView
    ready: Callable[[], bool] = lambda: True     # whether the button may be pressed when idle


class Page:
    """Built once inside the Blocks: the session's job id, its overrides, its last requests (kept in the
    browser), and the timer that shows a queued job's place in the line."""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx
        self.job = gr.State(None)
        self.overrides = gr.State({})
        self.last = gr.BrowserState({}, storage_key="wan-studio-last-requests")
        self.ticker = gr.Timer(1.0, active=False)
        self.runners: list[Runner] = []
        self._pending: list[tuple] = []

    # ---- what the buttons and the status show -----------------------------------------------------
    def runner(self, kind: str) -> Runner:
        return next(r for r in self.runners if r.kind == kind)

    def buttons(self, job: Job | None = None) -> dict:
        out = {}
        for r in self.runners:
            if job is None or not job.active:
                out[r.button] = gr.update(value=r.idle_label, interactive=r.ready())
            elif r.kind == job.kind:
                label = (f"Queued ({self.ctx.jobs.ahead(job)} ahead)…" if job.state == "queued"
                         else "Running…")
                out[r.button] = gr.update(value=label, interactive=False)
            else:
                out[r.button] = gr.update(value=r.idle_label, interactive=False)
        return out

    def queued_status(self, job: Job) -> str:
        n = self.ctx.jobs.ahead(job)
        text = (f"Queued: {n} job{'s' if n != 1 else ''} ahead of yours" if n
                else "Queued: starting as soon as the GPU is free")
        return status_html("queued", text=text)

    @property
    def button_components(self) -> list:
        return [r.button for r in self.runners]

    # ---- events -----------------------------------------------------------------------------------
    def tick(self, job_id, request: gr.Request):
        job = self.ctx.jobs.get(job_id)
        if job is None or job.state != "queued" or job.session != session_of(request):
            return {self.ticker: gr.Timer(active=False)}
        return {self.runner(job.kind).view.status: self.queued_status(job), **self.buttons(job)}

    def idle(self):
        return {self.ticker: gr.Timer(active=False), **self.buttons(None)}

    def stop(self, request: gr.Request):
        stopped = self.ctx.jobs.stop(session_of(request))
        for job in stopped:
            log.info("job %s (%s) stop requested while %s", job.id[:8], job.label, job.state)
        out = {}
        for job in stopped:
            view = self.runner(job.kind).view
            if job.state == "done" and job.cancel.is_set() and job.event_id:
                continue                  # it ended meanwhile: its own last message says how
            if job.state == "running":
                out[view.status] = status_html("stopping", text="Stopping after the current step…")
            else:
                out[view.status] = status_html("stopped", text="Stopped before it started.")
                out.update(self.buttons(None))
        # Gradio reads an empty dict as one value for all the outputs: say "no change" explicitly
        return out or {self.runners[0].view.status: gr.skip()}

    def add_runner(self, r: Runner, stop_button: gr.Button, inputs: dict, outputs: list,
                   check: Callable[[dict], dict], body: Callable[[Job, dict], Iterator[dict]],
                   api_name: str, after: tuple | None = None) -> None:
        """Register `r.button` → submit → run → idle (wired by `wire()` once every tab is built, since each
        run also updates the other tabs' buttons). `inputs` maps parameter names to components (the API
        takes them in this order); `check(values)` returns {name: message} for what is wrong;
        `body(job, values)` streams the run's dict updates (`values["overrides"]` is the session's);
        `after` = (fn, inputs, outputs) runs once the job ended, however it ended."""
        self.runners.append(r)
        self._pending.append((r, stop_button, inputs, outputs, check, body, api_name, after))

    def wire(self) -> None:
        statuses = [r.view.status for r in self.runners]
        buttons = self.button_components
        # Stop and the queue ticker write the status line that the run streams into. Through the queue
        # (not queue=False, a separate HTTP response) their answers reach the page in the same stream as
        # the run's, in order: a late "Stopping…" cannot land on top of the run's final "Stopped".
        light = dict(concurrency_id=LIGHT, concurrency_limit=None, show_progress="hidden")
        self.ticker.tick(self.tick, [self.job], [self.ticker, *statuses, *buttons], api_visibility="private",
                         **light)
        stops = list(dict.fromkeys(spec[1] for spec in self._pending))
        for i, stop_button in enumerate(stops):
            stop_button.click(self.stop, None, [*statuses, *buttons], api_name="stop" if i == 0 else f"stop_{i}",
                              api_visibility="public" if i == 0 else "private", **light)
        for spec in self._pending:
            self._wire_runner(*spec)

    def _wire_runner(self, r: Runner, stop_button, inputs: dict, outputs: list, check, body, api_name: str,
                     after: tuple | None):
        kwargs = {"job_id": self.job, **inputs, "overrides": self.overrides}
        names = list(kwargs)
        first = next(iter(inputs), None)

        def validations(values: dict, session: str, registered: bool):
            problems = dict(check(values))
            if not registered and first is not None:
                busy = self.ctx.jobs.active(session)
                if busy is not None:
                    problems.setdefault(first, f"Your {busy.label} job is still {busy.state}: "
                                               "press Stop first, or wait for it to finish.")
            return [gr.validate(n not in problems, problems.get(n, "")) for n in names]

        def validate_submit(request: gr.Request, **values):
            return validations(values, session_of(request), registered=False)

        def validate_run(request: gr.Request, **values):
            mine = self.ctx.jobs.get(values.get("job_id"))
            return validations(values, session_of(request),
                               registered=mine is not None and mine.session == session_of(request))

        def submit(request: gr.Request, **values):
            try:
                job = self.ctx.jobs.submit(session_of(request), r.kind)
            except Busy as e:
                raise gr.Error(f"Your {e.job.label} job is still {e.job.state}: press Stop first.") from None
            out = {self.job: job.id, self.ticker: gr.Timer(active=True), r.view.status: self.queued_status(job),
                   **self.buttons(job)}
            if r.view.error is not None:
                out[r.view.error] = EMPTY
            return out

        def run(request: gr.Request, **values):
            job = self.ctx.jobs.claim(values.get("job_id"), session_of(request), r.kind, _event_id())
            log.info("job %s (%s) starts%s", job.id[:8], job.label, " stopped already" if job.cancel.is_set() else "")
            try:
                if job.cancel.is_set():
                    yield {r.view.status: status_html("stopped", text="Stopped before it started."),
                           self.ticker: gr.Timer(active=False)}
                    return
                yield {self.ticker: gr.Timer(active=False), **self.buttons(job)}
                yield from body(job, values)
            finally:
                job.cancel.set()          # whatever ended the stream (done, error, page gone): the engine stops
                self.ctx.jobs.finish(job)
                log.info("job %s (%s) ended", job.id[:8], job.label)

        buttons = self.button_components
        submit_outputs = [self.job, self.ticker, r.view.status, *buttons]
        if r.view.error is not None:
            submit_outputs.append(r.view.error)
        ev = r.button.click(submit, inputs_kwargs=kwargs, outputs=submit_outputs, validator=validate_submit,
                            concurrency_id=LIGHT, concurrency_limit=None, show_progress="hidden",
                            api_visibility="private")
        run_outputs = list(dict.fromkeys([*outputs, self.ticker, *buttons]))
        done = ev.success(run, inputs_kwargs=kwargs, outputs=run_outputs, validator=validate_run,
                          concurrency_id=GPU, concurrency_limit=1, show_progress="hidden", api_name=api_name)
        ended = done.then(self.idle, None, [self.ticker, *buttons], queue=False, show_progress="hidden",
                          api_visibility="private")
        if after is not None:
            ended.then(*after, show_progress="hidden", api_visibility="private")
