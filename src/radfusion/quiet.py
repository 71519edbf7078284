"""Third-party console noise, silenced and counted (the way PyRadiomics' warnings are counted).

Every run used to print seven ``alembic.runtime.plugins`` INFO lines (Optuna's storage imports
alembic), a ``pykwalify`` "validation.valid" line (PyRadiomics' parameter schema), numexpr's thread
count, Lightning's litlogger tip and, per trainer stage, torch's ``LeafSpec`` deprecation warning from Lightning's own
code; a cold run also printed loky's "A worker stopped ... memory leak" when its memory guard replaced a
radiomics worker before the ROI tensors. None of them is about the user's run. :func:`silence_third_party`
drops exactly those records (matched by logger name and message, nothing else) and counts them;
:func:`summary` says once, at the end, what was silenced, so nothing disappears without a trace.

This module sits beside :mod:`radfusion.cache` and imports no pipeline stage.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections import Counter
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    """Records of logger ``logger`` (or its children) at or below ``max_level`` whose message matches ``pattern``."""

    what: str           # how the summary names it
    logger: str
    max_level: int = logging.INFO
    pattern: str = ""

    def matches(self, record: logging.LogRecord) -> bool:
        name = record.name
        if not (name == self.logger or name.startswith(self.logger + ".")) or record.levelno > self.max_level:
            return False
        return not self.pattern or re.search(self.pattern, record.getMessage()) is not None


#: The log records that are silenced.
LOG_RULES: tuple[Rule, ...] = (
    Rule("alembic INFO line(s)", "alembic"),
    Rule("pykwalify INFO line(s)", "pykwalify"),
    Rule("numexpr thread-count line(s)", "numexpr", pattern=r"defaulting to"),
    Rule("Lightning litlogger tip(s)", "pytorch_lightning", pattern=r"litlogger"),
    Rule("Lightning litlogger tip(s)", "lightning", pattern=r"litlogger"),
)
#: Loggers the records above are created by (a logger's filters see only its own records).
LOGGERS: tuple[str, ...] = ("alembic.runtime.plugins", "alembic.runtime.migration", "pykwalify.core",
                            "pykwalify.rule", "numexpr.utils", "pytorch_lightning.utilities.rank_zero",
                            "lightning.pytorch.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")
#: Python warnings that are silenced: (summary name, category, message pattern).
WARNING_RULES: tuple[tuple[str, type[Warning], str], ...] = (
    ("torch LeafSpec deprecation warning(s) (raised inside Lightning)", FutureWarning, r"LeafSpec"),
    # loky's memory guard: a worker whose memory grew by > 300 MB since its first task (the radiomics
    # workers, reused for the ROI tensors) exits after sending its result, and loky starts another and
    # warns. No task is lost; a crashed worker raises TerminatedWorkerError instead.
    ("loky worker replacement warning(s) (its memory guard; no task lost)", UserWarning,
     r"A worker stopped while some jobs were given to the executor"),
)

COUNTS: Counter = Counter()


class NoiseFilter(logging.Filter):
    """Drops and counts the records of :data:`LOG_RULES`."""

    def filter(self, record: logging.LogRecord) -> bool:
        for rule in LOG_RULES:
            if rule.matches(record):
                COUNTS[rule.what] += 1
                return False
        return True


_FILTER = NoiseFilter()
_state: dict = {}
_DEFAULT_SHOWWARNING = warnings.showwarning


def _showwarning(message, category, filename, lineno, file=None, line=None):
    for what, cat, pattern in WARNING_RULES:
        if issubclass(category, cat) and re.search(pattern, str(message)):
            COUNTS[what] += 1
            return None
    forward = _state.get("showwarning", _DEFAULT_SHOWWARNING)
    return forward(message, category, filename, lineno, file, line)


def silence_third_party() -> None:
    """Install the filters (idempotent): on the loggers that make the noise and on the root logger's
    handlers (Hydra's console and file handlers), and a ``warnings.showwarning`` hook."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
    # Once per process: libraries that wrap showwarning after us (MONAI does, at import) keep calling us;
    # installing again over such a wrapper would make the two call each other forever.
    if "showwarning" not in _state:
        _state["showwarning"] = warnings.showwarning
        warnings.showwarning = _showwarning


def restore() -> None:
    """Remove what :func:`silence_third_party` installed (tests)."""
    for name in LOGGERS:
        logging.getLogger(name).removeFilter(_FILTER)
    for handler in logging.getLogger().handlers:
        handler.removeFilter(_FILTER)
    previous = _state.pop("showwarning", _DEFAULT_SHOWWARNING)
    if warnings.showwarning is _showwarning:
        warnings.showwarning = previous


def summary(reset: bool = True) -> str | None:
    """One line naming what was silenced and how often (None when nothing was); ``reset`` starts a new count."""
    if not COUNTS:
        return None
    text = "silenced third-party console noise: " + ", ".join(f"{n} {what}" for what, n in COUNTS.most_common())
    if reset:
        COUNTS.clear()
    return text


def log_summary(logger: logging.Logger | None = None) -> str | None:
    """Log :func:`summary` once (INFO) and return it."""
    text = summary()
    if text:
        (logger or log).info("%s", text)
    return text
