"""`top`: a full-screen live monitor (prompt_toolkit Application).

Every few seconds a background thread samples the instances (status, CPU, memory), Caddy's
per-host request counters (a rate is the difference of two samples over the time between them:
Caddy's counters restart at every config load), and now and then each running instance's latest
error lines: the controller filters the last ERROR_SCAN lines of every service, so errors are
found even among many other lines. The screen shows CPU and memory as sparklines over the last
minutes. `q` (or Esc, Ctrl-C) leaves.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from shell.context import Context
from shell.output import human_bytes, percent

SAMPLE_EVERY = 3.0  # seconds
HISTORY = 60  # samples kept: three minutes
ERRORS_EVERY = 15.0  # seconds between two error-line scans
ERROR_LINES = 3  # shown per instance
ERROR_SCAN = 500  # lines per service the controller looks through for them
_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float | None], width: int = 30, top: float | None = None) -> str:
    points = [v for v in values if v is not None][-width:]
    if not points:
        return " " * width
    high = top if top is not None else max(points)
    high = high or 1.0
    line = "".join(
        _BARS[min(len(_BARS) - 1, int(v / high * (len(_BARS) - 1) + 0.5))] for v in points
    )
    return line.rjust(width)


class Monitor:
    """The sampled data; ``sample()`` is called from the thread, ``render()`` by the screen."""

    def __init__(self, manager: Any, clock: Callable[[], float] = time.monotonic) -> None:
        from controller.caddy import RateMeter

        self.manager = manager
        self.clock = clock
        self.meter = RateMeter()
        self.rows: list[Any] = []
        self.cpu: dict[str, deque] = {}
        self.memory: dict[str, deque] = {}
        self.requests: dict[str, float] | None = None
        self.errors: dict[str, list[str]] = {}
        self.problem: str | None = None
        self.metrics_known = False  # Caddy answered with per-host counters
        self.metrics_off = False  # Caddy answered without them
        self.updated: float | None = None
        self._errors_at = 0.0
        self.lock = threading.Lock()

    def sample(self) -> None:
        try:
            # Every host is asked side by side; one that does not answer leaves its instances
            # `unreachable` and is named at the top of the screen.
            unreachable: list[str] = []
            rows = list(self.manager.list(resources=True, problems=unreachable))
            problem = "; ".join(unreachable) or None
        except Exception as exc:
            rows, problem = self.rows, (str(exc).splitlines() or [type(exc).__name__])[0]
        # None: Caddy answers without per-host metrics, does not answer, or this is the first
        # sample (a rate needs two).
        try:
            counts = self.manager.request_counts()  # raw counters; rates: two samples
            requests = self.meter.sample(counts, self.clock())
            self.metrics_known = counts is not None
            self.metrics_off = counts is None
        except Exception:
            self.meter.sample(None, self.clock())
            requests = None
            self.metrics_known = self.metrics_off = False
        errors = self.errors
        if time.monotonic() - self._errors_at >= ERRORS_EVERY:
            self._errors_at = time.monotonic()
            errors = {}
            for row in rows:
                if row.status in ("running", "partial"):
                    try:
                        lines = self.manager.logs(row.name, errors_only=True, tail=ERROR_SCAN)
                        errors[row.name] = [line.rstrip() for line in lines][-ERROR_LINES:]
                    except Exception:
                        continue
        with self.lock:
            self.rows = rows
            self.problem = problem
            self.requests = requests
            self.errors = errors
            self.updated = time.time()
            for row in rows:
                self.cpu.setdefault(row.name, deque(maxlen=HISTORY)).append(row.cpu_percent)
                self.memory.setdefault(row.name, deque(maxlen=HISTORY)).append(row.memory_bytes)

    def render(self, width: int = 100) -> list[tuple[str, str]]:
        """Formatted text fragments for prompt_toolkit."""
        from shell.output import STATUS_MARKS

        out: list[tuple[str, str]] = []
        with self.lock:
            stamp = time.strftime("%H:%M:%S", time.localtime(self.updated)) if self.updated else "…"
            count = f"{len(self.rows)} instance" + ("" if len(self.rows) == 1 else "s")
            out.append(("bold", f" supabase-manager top   {count}   {stamp}"))
            out.append(("", "   q leaves\n\n"))
            if self.problem:
                out.append(("fg:ansired", f" {self.problem}\n\n"))
            if not self.rows and self.updated:
                out.append(("", " no instance\n"))
            spark = max(10, min(HISTORY, (width - 60) // 2))
            # NAME@HOST for an instance on another host (`host list`)
            names = [r.name if r.host == "local" else f"{r.name}@{r.host}" for r in self.rows]
            name_width = max([len(n) for n in names] + [4])
            out.append(
                (
                    "bold",
                    f"   {'NAME':<{name_width}}  {'STATUS':<11} "
                    f"{'CPU':<{spark}} {'':>7}  {'MEMORY':<{spark}} {'':>10}\n",
                )
            )
            for row, label in zip(self.rows, names, strict=True):
                mark, color = STATUS_MARKS.get(row.status, ("?", "dim"))
                style = {"green": "fg:ansigreen", "yellow": "fg:ansiyellow", "red": "fg:ansired"}
                out.append((style.get(color, ""), f" {mark} "))
                out.append(("", f"{label:<{name_width}}  {row.status:<11} "))
                out.append(
                    ("fg:ansicyan", sparkline(list(self.cpu.get(row.name, [])), spark, 100.0))
                )
                out.append(("", f" {percent(row.cpu_percent):>7}  "))
                memory = [
                    float(m) if m is not None else None for m in self.memory.get(row.name, [])
                ]
                out.append(("fg:ansimagenta", sparkline(memory, spark)))
                out.append(("", f" {human_bytes(row.memory_bytes):>10}\n"))
            if self.metrics_off and self.updated:
                out.append(
                    (
                        "fg:ansibrightblack",
                        "\n requests per host: Caddy has no per-host metrics "
                        "(global option metrics { per_host })\n",
                    )
                )
            if self.metrics_known:
                out.append(("bold", "\n Requests per second by host\n"))
            if self.metrics_known and self.requests is None:
                out.append(("", "   measuring…\n"))
            if self.requests is not None:
                if not self.requests:
                    out.append(("", "   none yet\n"))
                for host, rate in sorted(self.requests.items(), key=lambda kv: -kv[1]):
                    out.append(("", f"   {host:<50} {rate:8.2f}/s\n"))
            if self.errors:
                out.append(("bold", "\n Latest errors\n"))
                for name, lines in sorted(self.errors.items()):
                    if not lines:
                        continue
                    for line in lines:
                        out.append(("fg:ansired", f"   {name}: "))
                        out.append(("", f"{line[: max(20, width - len(name) - 6)]}\n"))
        return out


def run_top(ctx: Context, interval: float = SAMPLE_EVERY) -> None:
    from prompt_toolkit.application import Application
    from prompt_toolkit.key_binding import KeyBindings
    from prompt_toolkit.layout import HSplit, Layout, Window
    from prompt_toolkit.layout.controls import FormattedTextControl

    monitor = Monitor(ctx.new_manager())
    stop = threading.Event()
    bindings = KeyBindings()

    @bindings.add("q")
    @bindings.add("Q")
    @bindings.add("escape")
    @bindings.add("c-c")
    def _leave(event) -> None:
        event.app.exit()

    app: Application | None = None

    def text():
        width = app.output.get_size().columns if app is not None else 100
        return monitor.render(width)

    body = Window(FormattedTextControl(text), wrap_lines=False)
    app = Application(
        layout=Layout(HSplit([body])),
        key_bindings=bindings,
        full_screen=True,
        input=ctx.pt_input,
        output=ctx.pt_output,
    )

    def loop() -> None:
        while not stop.is_set():
            monitor.sample()
            if app.is_running:
                app.invalidate()
            stop.wait(interval)

    thread = threading.Thread(target=loop, name="top", daemon=True)
    thread.start()
    try:
        app.run()
    finally:
        stop.set()
