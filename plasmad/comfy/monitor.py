"""The ComfyUI monitor: is ComfyUI answering, since when, and what it offered when it last did.

One object, started with the daemon and held by `Core`, that everything asks instead of ComfyUI:
- `/health` reads its cached state (answers within a second even while ComfyUI hangs);
- validation reads its catalogue (samplers, schedulers, node classes: `plasmad.comfy.catalogue`),
  so a job is queued whether ComfyUI answers or not;
- the queue's readiness gate asks `blocks` ("ComfyUI at URL, not answering since 21:04") and
  waits in `wait_up`, which probes `/system_stats` with a backoff until ComfyUI answers;
- a job that saw ComfyUI go away says so (`report_away`), so nobody waits for the next probe.

While ComfyUI answers it is asked every IDLE_PROBE_S (cheap: one small GET); while it does not,
with a backoff from MIN_BACKOFF_S to MAX_BACKOFF_S. Each return of ComfyUI refreshes the catalogue
and the last `/system_stats` (device, flags), kept in `<state>/comfyui.json` (temp + rename) so a
restarted plasmad knows them before ComfyUI is back. A managed ComfyUI that stops answering for
`hang_s` (a hang: SIGSTOP, a deadlock) is killed, and its supervisor starts it again.
Transitions are published on the event bus as `comfyui.up` / `comfyui.down`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from plasmad.comfy.answers import ComfyAway
from plasmad.comfy.catalogue import Catalogue, template_classes
from plasmad.comfy.client import ComfyClient
from plasmad.comfy.precision import UnetDtype, resolve_unet_dtype
from plasmad.comfy.process import ManagedComfyUI
from plasmad.core.events import EventBus
from plasmad.core.fsutil import replace_atomic

log = logging.getLogger(__name__)

IDLE_PROBE_S = 10.0
MIN_BACKOFF_S = 0.25
MAX_BACKOFF_S = 5.0
FRESH_S = 2.0  #: a probe this recent is the truth; older, /health asks again (within HEALTH_WAIT_S)
HEALTH_WAIT_S = 0.8


def _clock(at: datetime) -> str:
    return at.strftime("%H:%M")


class ComfyMonitor:
    def __init__(
        self,
        client: ComfyClient,
        events: EventBus,
        *,
        state_file: Path | None = None,
        templates_dir: Path | None = None,
        process: ManagedComfyUI | None = None,
        idle_probe_s: float = IDLE_PROBE_S,
        min_backoff_s: float = MIN_BACKOFF_S,
        max_backoff_s: float = MAX_BACKOFF_S,
    ) -> None:
        self.client = client
        self.url = client.base_url
        self._events = events
        self._state_file = state_file
        self._templates_dir = templates_dir
        self.process = process
        self._idle_probe = idle_probe_s
        self._min_backoff = min_backoff_s
        self._max_backoff = max_backoff_s
        self.up: bool | None = None  #: None: not asked yet
        self.since = datetime.now().astimezone()  #: when `up` took its present value
        self.error: str | None = None  #: why it last did not answer
        self.stats: dict[str, Any] | None = None  #: the last good /system_stats (kept across restarts)
        self.stats_at: str | None = None
        self.catalogue = Catalogue()
        self._classes: list[str] = ["KSampler"]
        self._checked = 0.0  #: monotonic time of the last probe's end
        self._unanswered_since: float | None = None  #: first of the probes that timed out in a row
        self._probing: asyncio.Task[bool] | None = None
        self._up = asyncio.Event()
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._forsaken: set[str] = set()  #: prompts to interrupt once ComfyUI is back

    # --- life -----------------------------------------------------------------------------------------

    async def start(self, first_probe_s: float = 5.0) -> None:
        """Read what the state dir kept, ask ComfyUI once (briefly), then keep watching."""
        await self.load()
        if self.process is not None:
            self.process.on_change = self.poke
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(first_probe_s):
                await asyncio.shield(self.probe())
        self._task = asyncio.create_task(self._watch(), name="comfyui-monitor")

    async def stop(self) -> None:
        for task in (self._task, self._probing):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=5.0)  # bounded: a stop never hangs the daemon's
        self._task = None

    async def load(self) -> None:
        if self._templates_dir is not None:
            self._classes = await asyncio.to_thread(template_classes, self._templates_dir)
        if self._state_file is None:
            return
        try:
            data = json.loads(await asyncio.to_thread(self._state_file.read_bytes))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s (%s): using ComfyUI %s's defaults", self._state_file, exc, "0.3.75")
            return
        if isinstance(data, dict):
            self.stats = data.get("systemStats") if isinstance(data.get("systemStats"), dict) else None
            self.stats_at = data.get("seenAt")
            self.catalogue = Catalogue.from_json(data.get("catalogue") or {})

    async def _watch(self) -> None:
        """Ask again every IDLE_PROBE_S while ComfyUI answers, with a backoff while it does not, and
        at once when poked. (`start` has just asked: the first question waits its turn.)"""
        backoff = self._min_backoff
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._idle_probe if self.up else backoff):
                    await self._poke.wait()
            self._poke.clear()
            if await self.probe():
                backoff = self._min_backoff
            else:
                await self._end_a_hang()
                backoff = min(backoff * 2, self._max_backoff)

    def poke(self) -> None:
        """Ask again now (a managed ComfyUI started or died; a job saw it go)."""
        self._poke.set()

    # --- asking ComfyUI -------------------------------------------------------------------------------

    async def probe(self) -> bool:
        """Ask ComfyUI now (one question at a time, shared by whoever asks meanwhile); True if it answers."""
        if self._probing is None or self._probing.done():
            self._probing = asyncio.create_task(self._probe_once(), name="comfyui-probe")
        return await asyncio.shield(self._probing)

    async def _probe_once(self) -> bool:
        try:
            stats = await self.client.system_stats()
        except ComfyAway as exc:
            self._saw_away(exc.reason, timed_out=exc.timed_out)
            return False
        finally:
            self._checked = time.monotonic()
        await self._saw_up(stats)
        return True

    async def _saw_up(self, stats: dict[str, Any]) -> None:
        self._unanswered_since = None
        changed = _identity(stats) != _identity(self.stats or {})
        self.stats, self.stats_at = stats, datetime.now().astimezone().isoformat(timespec="seconds")
        if self.up is not True or changed or not self.catalogue.seen:
            await self._refresh_catalogue()
        if self.up is not True:
            was = self.up
            self.up, self.error = True, None
            self.since = datetime.now().astimezone()
            if was is False:
                log.info("ComfyUI at %s answers again", self.url)
            self._events.publish("comfyui.up", url=self.url, version=self.version)
            for prompt_id in sorted(self._forsaken):
                await self.interrupt(prompt_id)
        self._up.set()

    def _saw_away(self, reason: str, *, timed_out: bool) -> None:
        paused = self.process.paused if self.process is not None else None
        if paused:
            reason = f"is stopped by plasmad during {paused}"  # on purpose: not a fault to report
        now = time.monotonic()
        if timed_out:
            self._unanswered_since = self._unanswered_since or now
        else:
            self._unanswered_since = None
        self.error = reason
        if self.up is not False:
            self.up = False
            self.since = datetime.now().astimezone()
            self._up.clear()
            log.warning("ComfyUI at %s %s", self.url, reason)
            self._events.publish("comfyui.down", url=self.url, reason=reason)

    def report_away(self, reason: str, *, timed_out: bool = False) -> None:
        """A job saw ComfyUI go (a dropped connection, a hang): away now, asked again at once."""
        self._saw_away(reason, timed_out=timed_out)
        self.poke()

    async def _refresh_catalogue(self) -> None:
        """What ComfyUI offers, asked class by class (the full /object_info is megabytes)."""
        self.client.forget_object_info()  # a restarted ComfyUI may have other nodes and models
        infos: dict[str, dict[str, Any]] = {}
        try:
            for node_class in self._classes:
                infos[node_class] = await self.client.object_info(node_class)
        except ComfyAway as exc:
            log.info("ComfyUI went before its node list was read (%s); keeping the last one", exc.reason)
            return
        version = self.version or "?"
        source = f"ComfyUI {version} at {self.url}, {self.stats_at}"
        self.catalogue = Catalogue.from_object_info(infos, source)
        await self._save()

    async def refresh(self) -> Catalogue:
        """The catalogue, read again now if ComfyUI answers (before refusing what it may offer by now)."""
        if self.up:
            await self._refresh_catalogue()
        return self.catalogue

    async def _save(self) -> None:
        if self._state_file is None:
            return
        data = {
            "url": self.url,
            "seenAt": self.stats_at,
            "systemStats": self.stats,
            "catalogue": self.catalogue.to_json(),
        }
        try:
            body = json.dumps(data, indent=1).encode()
            await asyncio.to_thread(replace_atomic, self._state_file, body)
        except OSError as exc:
            log.warning("cannot keep ComfyUI's catalogue in %s: %s", self._state_file, exc)

    async def interrupt(self, prompt_id: str) -> None:
        """Stop a prompt nobody waits for any more: now if ComfyUI answers, else once it is back."""
        try:
            await self.client.interrupt(prompt_id)
        except ComfyAway as exc:
            log.info("cannot interrupt prompt %s now (%s): once ComfyUI is back", prompt_id, exc.reason)
            self._forsaken.add(prompt_id)
        else:
            self._forsaken.discard(prompt_id)

    async def _end_a_hang(self) -> None:
        """A managed ComfyUI whose process runs but has not answered for hang_s is hung: kill it, its
        supervisor starts another."""
        process, since = self.process, self._unanswered_since
        if process is None or since is None or process.state != "running":
            return  # not ours, answering, or still loading (its start timeout decides then)
        silent = time.monotonic() - since
        if silent >= self.client.hang_s:
            self._unanswered_since = None
            await process.kill_hung(f"it did not answer for {silent:.0f} s")

    # --- what the others ask --------------------------------------------------------------------------

    async def wait_up(self) -> None:
        """Return once ComfyUI answers, asking with a backoff meanwhile. A ComfyUI last seen up is
        taken at its word (no question per job): whoever sees it go says so (`report_away`)."""
        backoff = self._min_backoff
        while not self.up and not await self.probe():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._up.wait()
            backoff = min(backoff * 2, self._max_backoff)

    def blocks(self) -> str | None:
        """Why work that needs ComfyUI cannot start now, or None (answering, or not asked yet)."""
        if self.up is not False:
            return None
        paused = self.process.paused if self.process is not None else None
        if paused:
            return f"ComfyUI, stopped by plasmad during {paused}"
        return f"ComfyUI at {self.url}, not answering since {_clock(self.since)}"

    async def fresh(self) -> None:
        """For /health: ask again if the last answer is old, but never wait more than HEALTH_WAIT_S."""
        if time.monotonic() - self._checked > FRESH_S:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEALTH_WAIT_S):
                    await self.probe()

    @property
    def device_types(self) -> list[str]:
        """The device types ComfyUI last reported (cpu, mps, cuda); [] if none is known."""
        devices = (self.stats or {}).get("devices") or []
        return [str(d.get("type")) for d in devices if isinstance(d, dict) and d.get("type")]

    @property
    def version(self) -> str | None:
        version = (self.stats or {}).get("system", {}).get("comfyui_version")
        return str(version) if version else None

    def unet_dtype(self, setting: str) -> UnetDtype:
        return resolve_unet_dtype(setting, self.device_types)

    def describe(self) -> dict[str, Any]:
        """The monitor's view, for /health."""
        return {
            "answering": self.up is True,
            "since": self.since.isoformat(timespec="seconds"),
            "sinceClock": _clock(self.since),
            "checkedSecondsAgo": round(time.monotonic() - self._checked, 1) if self._checked else None,
            "lastSeen": self.stats_at,
            "catalogue": self.catalogue.source,
        }


def _identity(stats: dict[str, Any]) -> tuple[Any, ...]:
    """What tells one ComfyUI from another: version, launch flags, devices."""
    system = stats.get("system", {}) if isinstance(stats.get("system"), dict) else {}
    devices = tuple(str(d.get("type")) for d in stats.get("devices") or [] if isinstance(d, dict))
    return system.get("comfyui_version"), tuple(system.get("argv") or ()), devices
