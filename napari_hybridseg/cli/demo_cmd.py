"""``hybridseg demo``: napari with the plugin docked on the sample data (or a project).

Without flags it opens the demo for a person. With ``--train-steps N`` it
presses Train through the same widget code path a person uses, waits for the
run, shows the lowest-weight weak sample in the review, and with
``--screenshot FILE --quit`` saves a full-window screenshot and exits: the
smoke test of the whole plugin for CI and docs.

``--measure-responsiveness`` also records napari's event-loop stalls while
training runs and the time from pressing Train to the first prediction
overlay, and prints them as JSON (docs/responsiveness.md).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

__all__ = ["register", "run_demo"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="open napari with the plugin on the sample data (or a project)",
        description="Open napari with the HybridSeg plugin docked, on a copy of the sample data or on PROJECT. "
                    "With --train-steps it trains through the widget, shows the lowest-weight weak image and can "
                    "save a screenshot and quit (a smoke test). Needs a display (on a server: xvfb-run -a).",
    )
    p.add_argument("--project", type=Path, help="a project folder to open instead of the sample data")
    p.add_argument("--train-steps", type=int, default=0, metavar="N", help="press Train for N steps (default: 0)")
    p.add_argument("--screenshot", type=Path, metavar="FILE", help="save a full-window screenshot (PNG) at the end")
    p.add_argument("--panel-screenshots", type=Path, metavar="DIR",
                   help="also save each tab of the dock (panel-data.png, panel-train.png, panel-review.png) into DIR "
                        "at the end")
    p.add_argument("--quit", action="store_true", help="exit after training and the screenshot")
    p.add_argument("--show", metavar="SAMPLE", help="after training, review this sample instead of the "
                   "lowest-weight weak one")
    p.add_argument("--preset", default="cpu-quick", help="training preset (default: cpu-quick)")
    p.add_argument("--size", type=int, help="training input size in pixels (default: the preset's)")
    p.add_argument("--batch-size", type=int, help="training batch size (default: the preset's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    p.add_argument("--measure-responsiveness", action="store_true",
                   help="measure event-loop stalls while training and the time to the first prediction overlay")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the measurements to FILE")
    p.add_argument("--timeout", type=float, default=1800.0, help="give up on training after this many seconds")
    p.set_defaults(handler=run_demo)


def _check_display() -> None:
    from napari_hybridseg.cli import CLIError

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) \
            and os.environ.get("QT_QPA_PLATFORM", "") not in ("offscreen", "minimal"):
        raise CLIError("no display: napari needs one. On a server run it under Xvfb, e.g. "
                       "`xvfb-run -a hybridseg demo ...` (Debian package xvfb)", code=2)


def run_demo(args) -> int:
    """Handler of ``hybridseg demo`` (see the module docstring)."""
    from napari_hybridseg.cli import CLIError

    if args.train_steps < 0:
        raise CLIError("--train-steps must be 0 or more")
    if args.quit and not args.train_steps and not args.screenshot and not args.panel_screenshots:
        raise CLIError("--quit without --train-steps or --screenshot would open and close napari: add one of them")
    if args.project is not None and not (args.project / "project.json").is_file():
        raise CLIError(f"{args.project}: not a project folder (no project.json); create one with `hybridseg import`")
    _check_display()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_hybridseg.widgets import HybridSegWidget, copy_sample_project

    viewer = napari.Viewer(title="napari-hybridseg demo")
    widget = HybridSegWidget(viewer)
    viewer.window.add_dock_widget(widget, name="HybridSeg", area="right")
    qt_window = viewer.window._qt_window
    qt_window.resize(1500, 950)
    if args.project is not None:
        project = args.project
    else:
        # never the shipped sample_data/: a fresh copy, so the demo always starts from the same state
        project = copy_sample_project()
    widget.open_project(project)
    print(f"hybridseg demo: project {project}", flush=True)
    if args.show is not None and args.show not in widget.session.collection.samples:
        widget.prepare_close(ask=False)
        viewer.close()
        raise CLIError(f"--show {args.show}: no such sample in {project}")
    _settle(0.3)

    results: dict = {"project": str(project)}
    if args.train_steps:
        results.update(_train(widget, args))
        _show_lowest_weight(widget, args.show)
        _settle(0.5)
    if args.screenshot is not None:
        _close_notifications(qt_window)
        _settle(0.2)
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(args.screenshot), canvas_only=False)
        print(f"hybridseg demo: screenshot {args.screenshot}", flush=True)
        results["screenshot"] = str(args.screenshot)
    if args.panel_screenshots is not None:
        results["panel_screenshots"] = _panel_screenshots(widget, args.panel_screenshots)
    if args.measure_responsiveness or args.json:
        text = json.dumps(results, indent=2)
        print(text, flush=True)
        if args.json:
            args.json.write_text(text + "\n")
    if args.quit:
        widget.prepare_close(ask=False)
        viewer.close()
        QApplication.processEvents()
        failed = results.get("error")
        return 1 if failed else 0
    napari.run()
    return 0


def _panel_screenshots(widget, folder: Path) -> list[str]:
    """Grab each tab of the dock as it is now (after the run): the pictures in docs/plugin.md."""
    folder.mkdir(parents=True, exist_ok=True)
    current = widget.tabs.currentIndex()
    out = []
    for i, name in enumerate(("data", "train", "review")):
        widget.tabs.setCurrentIndex(i)
        _settle(0.3)
        path = folder / f"panel-{name}.png"
        page = widget.tabs.widget(i)
        panel = page.widget() if hasattr(page, "widget") else page  # the whole panel, not the scrolled view
        if not panel.grab().save(str(path)):
            raise OSError(f"could not write {path}")
        out.append(str(path))
        print(f"hybridseg demo: panel screenshot {path}", flush=True)
    widget.tabs.setCurrentIndex(current)
    _settle(0.1)
    return out


def _close_notifications(qt_window) -> None:
    """Close napari's notification toasts so they do not cover the image in the screenshot."""
    try:
        from napari._qt.dialogs.qt_notification import NapariQtNotification
    except ImportError:  # napari moved it: the screenshot just shows the toasts
        return
    for toast in qt_window.findChildren(NapariQtNotification):
        toast.close()


def _settle(seconds: float) -> None:
    """Let Qt process events (layout, paint) for a while."""
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def _train(widget, args) -> dict:
    """Press Train exactly as a person would (same code path) and wait for the run to end."""
    from napari_hybridseg.cli import CLIError
    from napari_hybridseg.widgets.responsiveness import StallProbe

    panel = widget.train_panel
    panel.preset.value = args.preset
    panel.apply_preset(args.preset)
    panel.steps.value = args.train_steps
    panel.device.value = args.device
    if args.size:
        panel.input_size.value = args.size
    if args.batch_size:
        panel.batch_size.value = args.batch_size
    widget.show_tab(panel)
    errors: list[str] = []
    widget.runner.failed.connect(lambda msg, exc: errors.append(msg))
    every = max(1, args.train_steps // 10)

    def report_progress(r) -> None:  # a log line for CI, ten per run
        if r.step % every == 0:
            print(f"hybridseg demo: step {r.step}/{r.total_steps}, {r.sec_per_step:.2f} s/step", flush=True)

    widget.runner.stepped.connect(report_progress)
    # a person annotates before pressing Train: by then the plugin has loaded torch in the background
    warm_start = time.perf_counter()
    while not widget.warmed_up.is_set() and time.perf_counter() - warm_start < 300:
        _settle(0.05)
    warm_s = time.perf_counter() - warm_start
    probe = StallProbe(10)
    started = time.perf_counter()
    panel.train_btn.click()  # saves the project, snapshots the collection, starts the worker
    click_ms = (time.perf_counter() - started) * 1000
    probe.start()
    if not widget.runner.running:
        raise CLIError(panel.status.text())
    ended = widget.runner.wait(args.timeout)
    wall = time.perf_counter() - started
    stalls = probe.stop()
    if not ended:
        widget.stop_training()
        widget.runner.wait(120)
        raise CLIError(f"training did not finish within {args.timeout:.0f} s (--timeout)")
    if errors:
        raise CLIError(errors[-1], code=1)
    done, start = widget.runner.last_done, widget.runner.last_start
    out = {
        "device": start.device if start else None,
        "steps": done.step if done else None,
        "train_wall_s": round(wall, 1),
        "train_to_first_overlay_s": None if widget.first_overlay_s is None else round(widget.first_overlay_s, 2),
        "warm_up_wait_s": round(warm_s, 1),
        "train_click_ms": round(click_ms, 1),
        "event_loop_stalls": stalls,
        "worst_stalls_at_s_ms": probe.worst(5),
        "run_dir": str(widget.session.run_dir) if widget.session.run_dir else None,
    }
    print(f"hybridseg demo: trained {out['steps']} steps on {out['device']} in {wall:.0f} s; "
          f"first overlay after {out['train_to_first_overlay_s']} s; event-loop stalls p95 "
          f"{stalls['p95_ms']} ms, max {stalls['max_ms']} ms", flush=True)
    return out


def _show_lowest_weight(widget, sample: str | None = None) -> None:
    """Review ``sample`` (default: the weak sample with the lowest learned weight); wait for its prediction."""
    from napari_hybridseg.cli import CLIError

    review = widget.review_panel
    widget.show_tab(review)
    review.refresh()
    ids = review.ids_in_order()
    if sample is not None:
        if sample not in ids:
            raise CLIError(f"--show {sample}: not a weak sample of this project (the review lists {len(ids)})")
        ids = [sample]
    if ids:
        review.select(ids[0])
        widget.wait_for_predictions(120)
