"""``Generators``: the engine's one generator, routing each job to the generator of its task.

``LocalEngine`` and the GPU worker each own one. ``load_generators`` builds it from the
settings: text-to-image (on one GPU, or across several with ``IMAGINE_GPUS``) and, when
``IMAGINE_EDIT_MODEL`` is set and loads, editing next to it. A new kind of job adds one
generator under its task; tests build ``Generators`` from their own.

Editing is optional: with ``IMAGINE_EDIT_MODEL`` empty, or an edit model that cannot load here,
the engine runs text-to-image only and says why (``tasks()`` lacks ``"edit"``, which the bot
reads before it charges anything and a worker announces in its heartbeat; ``info().edit_off``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

from engine.admission import (
    EDIT_FAILED_MESSAGE,
    EDIT_NEEDS_GPU_MESSAGE,
    EDIT_NOT_ACROSS_GPUS_MESSAGE,
    EDIT_OFF_MESSAGE,
    NOT_HERE_MESSAGE,
)
from engine.contract import TASK_EDIT, TASK_GENERATE, FailureKind, JobFailed, JobRequest, JobResult
from engine.generator import UNWATCHED, Generator, GeneratorInfo, JobControl, Plan
from engine.settings import EngineSettings

logger = logging.getLogger(__name__)


class Generators(Generator):
    """One generator per task; the first one given is the main one (its card, its model)."""

    def __init__(
        self, generators: Mapping[str, Generator], *, off: Mapping[str, str] | None = None
    ) -> None:
        if not generators:
            raise ValueError("Generators needs at least one generator")
        self.generators = dict(generators)
        # Why a task this engine was meant to run is off (for the log, /status and the job).
        self.off = dict(off or {})
        self.main = next(iter(self.generators.values()))

    def generator_for(self, task: str) -> Generator:
        """The generator of ``task``, or ``JobFailed(UNAVAILABLE)`` saying why there is none."""
        generator = self.generators.get(task)
        if generator is None:
            raise JobFailed(FailureKind.UNAVAILABLE, self.off.get(task, NOT_HERE_MESSAGE))
        return generator

    # --------------------------------------------------------------- what it runs
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.generators)

    def resident_models(self) -> tuple[str, ...]:
        """The models whose weights are on the accelerator now (each listed once)."""
        found = (m for g in self._distinct() for m in g.resident_models())
        return tuple(dict.fromkeys(found))

    def preferred_task(self) -> str | None:
        """When not every model fits: the task whose model is resident now (its jobs go first,
        within the fair queue's bound), so a mix of /imagine and /edit swaps rarely."""
        for generator in self._distinct():
            task = generator.preferred_task()
            if task is not None:
                return task
        return None

    def info(self) -> GeneratorInfo:
        info = self.main.info()
        edit = self.generators.get(TASK_EDIT)
        if edit is not None and edit is not self.main:
            info = edit.info()
        return dataclasses.replace(
            info,
            tasks=self.tasks(),
            resident_models=self.resident_models(),
            edit_off=self.off.get(TASK_EDIT),
        )

    # --------------------------------------------------------------- generation
    def plan(self, request: JobRequest) -> Plan:
        return self.generator_for(request.task).plan(request)

    def generate(
        self, request: JobRequest, control: JobControl = UNWATCHED, plan: Plan | None = None
    ) -> JobResult:
        """Run one job on the generator of its task (which makes its model resident first)."""
        return self.generator_for(request.task).generate(request, control, plan)

    def warmup(self) -> None:
        """Warm every generator once (the edit pipeline shares text-to-image's encoder and VAE,
        whose first call is the slow one)."""
        for generator in self._distinct():
            generator.warmup()

    def free_memory(self) -> None:
        for generator in self._distinct():
            generator.free_memory()

    def _distinct(self) -> list[Generator]:
        return list(dict.fromkeys(self.generators.values()))


def load_main(settings: EngineSettings) -> Generator:
    """The text-to-image generator: ``ImageGenerator.load``, or with several GPUs in
    ``IMAGINE_GPUS`` the ``engine.parallel`` generator that runs each image across them."""
    gpus = [g.strip() for g in settings.gpus.split(",") if g.strip()]
    if len(gpus) > 1:
        from engine import parallel

        return parallel.load(settings)
    from engine.pipeline import ImageGenerator

    if len(gpus) == 1 and not settings.device.startswith("cpu"):
        settings = settings.model_copy(update={"device": f"cuda:{gpus[0]}"})
    return ImageGenerator.load(settings)


def load_generators(settings: EngineSettings, main: Generator | None = None) -> Generators:
    """Load text-to-image (unless ``main`` is it, already loaded), then the edit model next to
    it when ``IMAGINE_EDIT_MODEL`` is set. An edit model that cannot load leaves the engine
    running text-to-image only, logged; it never stops the engine."""
    from engine.devices import EngineUnavailable
    from engine.edit import EditGenerator, EditUnavailable
    from engine.pipeline import ImageGenerator

    if main is None:
        main = load_main(settings)
    if not settings.edit_model.strip():
        logger.info("image editing is off (IMAGINE_EDIT_MODEL is empty)")
        return Generators({TASK_GENERATE: main}, off={TASK_EDIT: EDIT_OFF_MESSAGE})
    if not isinstance(main, ImageGenerator):  # engine.parallel: no single pipeline to share
        logger.warning("image editing is off: it does not run with IMAGINE_GPUS")
        return Generators({TASK_GENERATE: main}, off={TASK_EDIT: EDIT_NOT_ACROSS_GPUS_MESSAGE})
    try:
        editor = EditGenerator.load(main, settings)
    except EditUnavailable as exc:
        logger.info("image editing is off: %s", exc)
        return Generators({TASK_GENERATE: main}, off={TASK_EDIT: str(exc)})
    except EngineUnavailable as exc:  # the real edit model on a CPU: expected, not a fault
        logger.warning("image editing is off: %s", exc)
        return Generators({TASK_GENERATE: main}, off={TASK_EDIT: EDIT_NEEDS_GPU_MESSAGE})
    except Exception as exc:  # missing files, a bad checkpoint, out of memory
        logger.error(
            "image editing is off: the edit model %r could not be loaded (%s: %s)",
            settings.edit_model,
            exc.__class__.__name__,
            (str(exc).splitlines() or [""])[0][:300],
        )
        return Generators({TASK_GENERATE: main}, off={TASK_EDIT: EDIT_FAILED_MESSAGE})
    return Generators({TASK_GENERATE: main, TASK_EDIT: editor})
