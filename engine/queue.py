"""The in-process image backend: a fair waiting line and the one thread that owns the pipeline.

diffusers pipelines are not thread-safe (two concurrent calls on one QwenImagePipeline fail with
"index out of bounds"), so a single daemon thread runs every job. The asyncio side submits jobs
and awaits futures; progress and results cross back with ``call_soon_threadsafe``.

The generator is ``engine.generators.Generators`` (one generator per task: text-to-image, and
editing when ``IMAGINE_EDIT_MODEL`` is set), loaded on the GPU thread; each job runs through
``engine.runner.JobRunner``, the runner the Redis workers use too. When the models cannot all
stay on the GPU, the waiting line serves jobs of the model already resident first, within
``FairQueue``'s bound (no job is jumped more than three times), so a mix of /imagine and /edit
swaps rarely.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time

from engine.admission import (
    CANCELLED_MESSAGE,
    EDIT_OFF_MESSAGE,
    NOT_HERE_MESSAGE,
    NOT_RUNNING_MESSAGE,
    SHUT_DOWN_MESSAGE,
    FutureHandle,
    check_room,
    settle_threadsafe,
)
from engine.contract import (
    TASK_EDIT,
    TASK_GENERATE,
    EngineStatus,
    FailureKind,
    JobFailed,
    JobRequest,
    JobResult,
    Progress,
    ProgressCallback,
)
from engine.fairqueue import FairQueue
from engine.generator import Generator, GeneratorInfo
from engine.loading import STAGE_LOADING, STAGE_WARMING, LoadState, WatchDownload
from engine.runner import JobRunner
from engine.settings import EngineSettings

logger = logging.getLogger(__name__)

GPU_STOPPED_MESSAGE = (
    "The image engine stopped after an unexpected error, so this image was not made — nothing "
    "was charged."
)
GPU_STOPPED_NOTE = "The GPU thread stopped after an unexpected error; restart the bot."
LOAD_FAILED_MESSAGE = (
    "The image engine could not load its model, so no images can be made right now — nothing "
    "was charged."
)


@dataclasses.dataclass(eq=False)
class _Job:
    request: JobRequest
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[JobResult]
    on_progress: ProgressCallback | None
    enqueued_at: float
    cancel_requested: threading.Event = dataclasses.field(default_factory=threading.Event)
    started_at: float | None = None


class LocalEngine:
    """``ImageBackend`` that renders in this process on one GPU thread.

    ``generator``: an already loaded one (tests bring their own); by default the settings'
    models are loaded on the GPU thread after ``start``.
    """

    def __init__(self, settings: EngineSettings, generator: Generator | None = None) -> None:
        self.settings = settings
        self._generator = generator
        self._runner = JobRunner(generator) if generator is not None else None
        self._lock = threading.Condition()
        self._waiting: FairQueue[_Job] = FairQueue()
        self._jobs: dict[str, _Job] = {}
        self._running: _Job | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._dead = False  # the GPU thread ended without being asked to
        self._info: GeneratorInfo | None = None
        # The model loads on the GPU thread, after start() returned (see ``_load``).
        self._load_state = LoadState()
        self._loaded = threading.Event()  # the model is ready
        self._settled = threading.Event()  # the load ended, well or not
        self._load_error: str | None = None

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Start the GPU thread and return at once: the model loads (downloads, warms up) on
        that thread, so the bot connects meanwhile; jobs submitted before it is ready wait in
        the line, and ``status()`` says what the load is doing."""
        if self._thread is not None:
            return
        self._stopping = False
        if self._generator is not None and not self.settings.warmup:  # nothing to load
            self._info = self._generator.info()
            self._loaded.set()
            self._settled.set()
        else:
            self._load_state.stage(STAGE_LOADING)
        self._thread = threading.Thread(target=self._run, name="imagine-gpu", daemon=True)
        self._thread.start()

    async def loaded(self) -> None:
        """Wait until the model is ready; ``JobFailed(UNAVAILABLE)`` if it could not load."""
        await asyncio.to_thread(self._settled.wait)
        if self._load_error is not None:
            raise JobFailed(FailureKind.UNAVAILABLE, LOAD_FAILED_MESSAGE)

    def _load(self) -> bool:
        """Load and warm the model on the GPU thread; on failure answer every waiting job."""
        try:
            generator = self._generator
            if generator is None:
                # torch is imported here, on the GPU thread, never by importing this module
                from engine.generators import load_generators

                self._load_state.stage(STAGE_LOADING)
                with WatchDownload(self.settings.model, self._load_state):
                    generator = load_generators(self.settings)
                self._generator, self._runner = generator, JobRunner(generator)
            if self.settings.warmup and not self._stopping:
                self._load_state.stage(STAGE_WARMING)
                generator.warmup()
            self._info = generator.info()
        except BaseException as exc:  # whatever it was, the jobs must hear of it
            logger.critical("the model could not be loaded; refusing jobs", exc_info=True)
            self._load_failed(exc)
            return False
        self._load_state.stage(None)
        self._loaded.set()
        self._settled.set()
        logger.info("local engine ready: %s", self._info)
        return True

    def _load_failed(self, exc: BaseException) -> None:
        with self._lock:
            # By exception class only: its text may name a path on this machine.
            self._load_error = (
                f"The model could not be loaded ({type(exc).__name__}); the bot's log says why."
            )
            self._load_state.fail(self._load_error)
            jobs = []
            while (item := self._waiting.pop()) is not None:
                jobs.append(item[1])
            self._jobs.clear()
        self._settled.set()
        for job in jobs:
            self._resolve(job, JobFailed(FailureKind.UNAVAILABLE, LOAD_FAILED_MESSAGE))

    async def close(self) -> None:
        with self._lock:
            self._stopping = True
            waiting = []
            while (item := self._waiting.pop()) is not None:
                waiting.append(item[1])
            if self._running is not None:
                self._running.cancel_requested.set()
            self._lock.notify_all()
        for job in waiting:
            self._jobs.pop(job.request.job_id, None)
            self._resolve(job, JobFailed(FailureKind.UNAVAILABLE, SHUT_DOWN_MESSAGE))
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
            self._thread = None

    # ------------------------------------------------------------------ queue API
    async def submit(
        self, request: JobRequest, on_progress: ProgressCallback | None = None
    ) -> FutureHandle:
        loop = asyncio.get_running_loop()
        with self._lock:
            existing = self._jobs.get(request.job_id)
            if existing is not None:
                return FutureHandle(request.job_id, existing.future)
            if self._load_error is not None:
                raise JobFailed(FailureKind.UNAVAILABLE, LOAD_FAILED_MESSAGE)
            if not self._alive():
                if self._dead:
                    raise JobFailed(FailureKind.UNAVAILABLE, GPU_STOPPED_MESSAGE)
                raise JobFailed(FailureKind.UNAVAILABLE, NOT_RUNNING_MESSAGE)
            mine = self._waiting.count_for(request.user_id) + int(
                self._running is not None and self._running.request.user_id == request.user_id
            )
            if request.task not in self._capabilities():
                raise JobFailed(FailureKind.UNAVAILABLE, self._task_off_message(request.task))
            check_room(self.settings, users_jobs=mine, waiting=len(self._waiting))
            job = _Job(request, loop, loop.create_future(), on_progress, time.perf_counter())
            self._jobs[request.job_id] = job
            self._waiting.push(request.user_id, request.job_id, job, group=request.task)
            self._lock.notify_all()
        return FutureHandle(request.job_id, job.future)

    async def position(self, job_id: str) -> int | None:
        with self._lock:
            if self._running is not None and self._running.request.job_id == job_id:
                return 0
            place = self._waiting.position(job_id)
            if place is None:
                return None
            return place + int(self._running is not None)

    async def cancel(self, job_id: str) -> bool:
        with self._lock:
            if self._running is not None and self._running.request.job_id == job_id:
                self._running.cancel_requested.set()
                return True
            job = self._waiting.remove(job_id)
            if job is None:
                return False
            self._jobs.pop(job_id, None)
        self._resolve(job, JobFailed(FailureKind.CANCELLED, CANCELLED_MESSAGE))
        return True

    async def status(self) -> EngineStatus:
        with self._lock:
            running = (self._running.request.job_id,) if self._running is not None else ()
            queue_length = len(self._waiting)
            alive = self._alive()
        load = self._load_state.snapshot()
        info = self._info
        return EngineStatus(
            backend="local",
            ready=alive and self._loaded.is_set(),
            note=GPU_STOPPED_NOTE if self._dead else None,
            model=info.model if info is not None else self.settings.model,
            memory_mode=info.memory_mode if info is not None else str(self.settings.memory_mode),
            gpu=info.gpu if info is not None else "unknown",
            queue_length=queue_length,
            running=running,
            mean_sec_per_step=self._runner.sec_per_step if self._runner is not None else None,
            fast_available=info.fast_available if info is not None else False,
            queued_ceiling_per_user=self.settings.queued_ceiling_per_user,
            resident_models=self._resident_models(),
            capabilities=self._capabilities(),
            loading=load.loading,
            load_progress=load.progress,
            load_eta_s=load.eta_s,
            load_error=self._load_error,
            edit_off=self._edit_off(),
        )

    # ------------------------------------------------------------------ models
    def _capabilities(self) -> tuple[str, ...]:
        """The tasks the loaded generator runs. While the model loads, what it is meant to
        run: an edit waits like any job, and fails plainly if the edit model then does not
        load."""
        if self._generator is not None and self._loaded.is_set():
            return self._generator.tasks()
        if self._load_error is not None:
            return (TASK_GENERATE,)
        wanted = (TASK_GENERATE, TASK_EDIT)
        return wanted if self.settings.edit_model.strip() else wanted[:1]

    def _edit_off(self) -> str | None:
        """Why this engine does not edit (None while it does, or may once loaded)."""
        if TASK_EDIT in self._capabilities():
            return None
        if not self.settings.edit_model.strip():
            return EDIT_OFF_MESSAGE
        if self._load_error is not None:
            return self._load_error
        if self._info is not None and self._info.edit_off:
            return self._info.edit_off
        return EDIT_OFF_MESSAGE if self._loaded.is_set() else None

    def _task_off_message(self, task: str) -> str:
        """Why this engine does not run ``task`` (editing turned off, the edit model that did
        not load), in words a member can read."""
        off = self._info.edit_off if self._info is not None and task == TASK_EDIT else None
        return off or (EDIT_OFF_MESSAGE if task == TASK_EDIT else NOT_HERE_MESSAGE)

    def _resident_models(self) -> tuple[str, ...]:
        if self._generator is None or not self._loaded.is_set():
            return ()
        return self._generator.resident_models()

    def _preferred_group(self) -> str | None:
        """The task whose model is on the GPU now when not all fit (its jobs go first)."""
        return self._generator.preferred_task() if self._generator is not None else None

    # ------------------------------------------------------------------ GPU thread
    def _alive(self) -> bool:
        """Jobs are taken only while the GPU thread runs: a dead one would never answer."""
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stopping and not self._dead

    def _run(self) -> None:
        if not self._loaded.is_set() and not self._load():
            return
        job: _Job | None = None
        try:
            while True:
                with self._lock:
                    while not self._stopping and len(self._waiting) == 0:
                        self._lock.wait()
                    if self._stopping:
                        return
                    item = self._waiting.pop(prefer=self._preferred_group())
                    assert item is not None
                    job = item[1]
                    job.started_at = time.perf_counter()
                    self._running = job
                try:
                    outcome: JobResult | JobFailed = self._execute(job)
                finally:
                    with self._lock:
                        self._running = None
                        self._jobs.pop(job.request.job_id, None)
                self._resolve(job, outcome)
                job = None
        except BaseException:  # what ``_execute`` cannot catch: SystemExit, a bug here
            logger.critical("the GPU thread stopped; failing every job", exc_info=True)
            self._thread_died(job)

    def _thread_died(self, running: _Job | None) -> None:
        """Answer every job this engine holds (the bot refunds them) and refuse new ones."""
        with self._lock:
            self._dead = True
            jobs = [running] if running is not None else []
            while (item := self._waiting.pop()) is not None:
                jobs.append(item[1])
            self._jobs.clear()
        for job in jobs:
            self._resolve(job, JobFailed(FailureKind.UNAVAILABLE, GPU_STOPPED_MESSAGE))

    def _execute(self, job: _Job) -> JobResult | JobFailed:
        assert self._runner is not None  # jobs are taken only once the model is loaded
        request = job.request
        queued_s = (job.started_at or job.enqueued_at) - job.enqueued_at

        def emit(progress: Progress) -> None:
            job.loop.call_soon_threadsafe(self._emit, job, progress)

        def stop() -> FailureKind | None:
            return FailureKind.CANCELLED if job.cancel_requested.is_set() else None

        ran = self._runner.run(
            request, emit=emit if job.on_progress is not None else None, stop=stop
        )
        if isinstance(ran.outcome, JobFailed):
            return ran.outcome
        return dataclasses.replace(ran.outcome, queued_s=queued_s)

    @staticmethod
    def _emit(job: _Job, progress: Progress) -> None:
        if job.on_progress is None or job.future.done():
            return
        try:
            job.on_progress(progress)
        except Exception:
            logger.exception("progress callback for job %s failed", progress.job_id)

    @staticmethod
    def _resolve(job: _Job, outcome: JobResult | JobFailed) -> None:
        settle_threadsafe(job.loop, job.future, outcome, job.request.job_id)
