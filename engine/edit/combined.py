"""``Generators``: text-to-image and, when configured, editing behind one generator interface.

``LocalEngine`` and the GPU worker each own one object with ``generate`` / ``info`` /
``warmup`` / ``free_memory``; this is that object when editing may be on. Before *every* job
it makes the transformer the job needs resident (``EditGenerator.ensure_resident``), so a
text-to-image job after an edit never runs on a transformer that waits in host memory, then
hands the job to the edit pipeline (``request.edit_images``) or to text-to-image.

Editing is optional: with ``IMAGINE_EDIT_MODEL`` empty, or an edit model that cannot load
here, the engine runs text-to-image only and says so (``capabilities()`` lacks ``"edit"``, which
the bot reads before it charges anything, and which a worker announces in its heartbeat).
"""

from __future__ import annotations

import logging
from typing import Any

from engine.admission import EDIT_OFF_MESSAGE
from engine.contract import (
    CAPABILITY_EDIT,
    CAPABILITY_GENERATE,
    FailureKind,
    JobFailed,
    JobRequest,
    JobResult,
)
from engine.edit.generator import EditGenerator, EditUnavailable
from engine.presets import public_model_name
from engine.settings import EngineSettings

logger = logging.getLogger(__name__)

EDIT_NOT_HERE_MESSAGE = "This GPU worker cannot edit images."


def forget_captured_graphs(transformer: Any) -> int:
    """Drop the CUDA graphs captured on ``transformer`` (``engine.cudagraph``); returns how
    many graph wrappers were cleared.

    A captured graph replays the kernels on the *addresses* its weights had at capture. A swap
    moves the weights to host and back into new device memory, so a graph captured before it
    would read freed memory: after every swap the graphs are dropped and recaptured on the next
    forward (a few forwards' cost, far below the swap itself). Guarded: this module does not own
    ``engine.cudagraph`` and works whatever is (or is not) installed on the forward.
    """
    try:
        from engine.cudagraph import GraphedForward
    except ImportError:
        return 0
    wrappers = [getattr(transformer, "forward", None)]
    split = getattr(transformer, "_imagine_cfg_split", None)  # engine.parallel's CFG split
    if split is not None:
        wrappers.append(getattr(split, "_stock", None))
    cleared = 0
    for wrapper in wrappers:
        if isinstance(wrapper, GraphedForward):
            wrapper.clear()
            cleared += 1
    return cleared


class Generators:
    """The generator ``LocalEngine`` and the worker call: text-to-image plus optional editing.

    Everything not defined here (``settings``, ``pipe``, ``plan``, ``model_name``...) is the
    text-to-image generator's, so code written for ``ImageGenerator`` keeps working.
    """

    def __init__(
        self, base: Any, editor: EditGenerator | None = None, *, edit_off: str | None = None
    ) -> None:
        self.base = base
        self.editor = editor
        # Why editing is off here, for the log and info() (None while it is on).
        self.edit_off = None if editor is not None else (edit_off or EDIT_OFF_MESSAGE)

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes this class lacks: the text-to-image generator's.
        if name in ("base", "editor", "edit_off"):
            raise AttributeError(name)
        return getattr(self.base, name)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, settings: EngineSettings, base: Any = None) -> Generators:
        """Load text-to-image (unless given), then the edit model next to it when
        ``IMAGINE_EDIT_MODEL`` is set. An edit model that cannot load leaves the engine
        running text-to-image only, logged; it never stops the engine."""
        from engine.pipeline import EngineUnavailable

        if base is None:
            from engine.pipeline import load_generator  # IMAGINE_GPUS: engine.parallel

            base = load_generator(settings)
        if not settings.edit_model.strip():
            logger.info("image editing is off (IMAGINE_EDIT_MODEL is empty)")
            return cls(base, None, edit_off=EDIT_OFF_MESSAGE)
        if not hasattr(base, "pipe"):  # e.g. engine.parallel's facade: no single pipeline
            logger.warning("image editing is off: it does not run with IMAGINE_GPUS")
            return cls(base, None, edit_off=EDIT_OFF_MESSAGE)
        try:
            editor = EditGenerator.load(base, settings)
        except EditUnavailable as exc:
            logger.info("image editing is off: %s", exc)
            return cls(base, None, edit_off=str(exc))
        except EngineUnavailable as exc:  # the real edit model on a CPU: expected, not a fault
            logger.warning("image editing is off: %s", exc)
            return cls(base, None, edit_off=EDIT_OFF_MESSAGE)
        except Exception as exc:  # missing files, a bad checkpoint, out of memory
            logger.error(
                "image editing is off: the edit model %r could not be loaded (%s: %s)",
                settings.edit_model,
                exc.__class__.__name__,
                (str(exc).splitlines() or [""])[0][:300],
            )
            return cls(base, None, edit_off=EDIT_OFF_MESSAGE)
        return cls(base, editor)

    # --------------------------------------------------------------- what it runs
    def capabilities(self) -> tuple[str, ...]:
        """What this engine can run: ``generate``, plus ``edit`` when the edit model loaded."""
        if self.editor is None:
            return (CAPABILITY_GENERATE,)
        return (CAPABILITY_GENERATE, CAPABILITY_EDIT)

    def resident_models(self) -> tuple[str, ...]:
        """The models whose transformer is on the accelerator now."""
        if self.editor is None:
            return (public_model_name(str(getattr(self.base, "model_name", ""))),)
        return self.editor.resident_models()

    @property
    def swaps(self) -> bool:
        """Whether jobs of the other model cost a transformer swap (both don't fit)."""
        swap = self.editor.swap if self.editor is not None else None
        return swap is not None and not swap.keep_all

    def active_group(self) -> str | None:
        """The capability whose transformer is on the GPU now, when only one fits."""
        if not self.swaps:
            return None
        assert self.editor is not None and self.editor.swap is not None
        if self.editor.swap.is_resident(self.editor.model_name):
            return CAPABILITY_EDIT
        return CAPABILITY_GENERATE

    def info(self) -> dict[str, object]:
        info = dict(self.base.info())
        info["capabilities"] = list(self.capabilities())
        info["resident_models"] = list(self.resident_models())
        if self.editor is not None:
            edit = self.editor.info()
            info["edit_model"] = edit["edit_model"]
            info["edit_fast_available"] = edit["edit_fast_available"]
            info["edit_shared"] = edit["shared"]
            info["edit_optimizations"] = edit["optimizations"]
        else:
            info["edit_off"] = self.edit_off
        return info

    # --------------------------------------------------------------- generation
    def ensure_resident(self, request: JobRequest) -> float:
        """Swap in the transformer ``request`` needs; drop CUDA graphs a swap made stale."""
        if self.editor is None:
            return 0.0
        swapped = self.editor.ensure_resident(request)
        if swapped and self.swaps:
            for transformer in (self.base.pipe.transformer, self.editor.pipe.transformer):
                forget_captured_graphs(transformer)
        return swapped

    def generate(
        self,
        request: JobRequest,
        on_step: Any = None,
        should_stop: Any = None,
        **kwargs: Any,
    ) -> JobResult:
        """Run one job on the model it needs. Raises ``JobFailed`` like ``ImageGenerator``."""
        if request.edit_images:
            if self.editor is None:
                raise JobFailed(FailureKind.UNAVAILABLE, self.edit_off or EDIT_NOT_HERE_MESSAGE)
            self.ensure_resident(request)
            # The edit pipeline draws no previews; its progress goes through on_step only.
            return self.editor.generate(request, on_step=on_step, should_stop=should_stop)
        self.ensure_resident(request)
        return self.base.generate(request, on_step=on_step, should_stop=should_stop, **kwargs)

    def warmup(self) -> None:
        """Warm text-to-image (the edit pipeline shares its text encoder and VAE)."""
        warm = getattr(self.base, "warmup", None)
        if warm is not None:
            warm()

    def free_memory(self) -> None:
        free = getattr(self.base, "free_memory", None)
        if free is not None:
            free()
