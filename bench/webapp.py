"""Web app benchmark: the device list with 5000 devices, in headless Chromium.

Starts meshd on a fresh data folder, makes one device group and writes N agent device
records into its store (``meshd-admin dbimport --merge``, as the browser tests do), logs
in with Playwright driving ``/usr/bin/chromium`` and measures, in the page:

* **time to render**: from the start of the page load (after the login redirect) until
  the list shows all N devices with its first row drawn; this includes fetching the
  ``nodes`` answer;
* **filter**: from the keystroke (Enter, so without the typing pause; an app without
  that filters on the input event) until the frame after the list shows the one
  matching device, and back to the whole list;
* **sort**: a click on the "Device" column until the frame after the list is reversed;
* **live updates**: one ``nodeconnect`` event applied to the page's model until the row
  shows the device online, and a burst of N events (every device coming online at once,
  as after a server restart) until the summary says so;
* **scroll**: the longest frame while scrolling through the whole list in 40 steps;
* the **longest main-thread task** (PerformanceObserver ``longtask``) in each phase: the
  page is frozen for that long.

    python bench/webapp.py                    # this checkout's web/
    python bench/webapp.py --web-rev HEAD~3   # another revision's web/ (git archive), for
                                              # comparison; web/vendor/ is copied in

Each phase is run ``--runs`` times; the median is printed (as JSON lines).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PASSWORD = "Bench-Web-Pass-1"

# Collects long tasks from the first script on; read and reset by each phase.
LONGTASKS = """
window.__longtasks = [];
try {
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) window.__longtasks.push(entry.duration);
  }).observe({ type: "longtask", buffered: true });
} catch (error) {}
"""

# In the page: wait for the next frame; true once a phase ran past its limit (an app too
# slow for the phase, e.g. an older revision, is reported as -1 instead of blocking).
FRAME = """
window.frame = (began) => new Promise((r) => requestAnimationFrame(
  () => r(performance.now() - began > %d)));
""" % (120000,)

# Resolves after the next frame has been produced.
NEXT_FRAME = "() => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)))"


def web_dir_of(revision: str) -> str:
    """web/ of a git revision, with this checkout's built web/vendor/ copied in."""
    target = tempfile.mkdtemp(prefix="meshd-web-")
    archive = subprocess.run(["git", "archive", revision, "web"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", target], input=archive, check=True)
    folder = os.path.join(target, "web")
    vendor = os.path.join(ROOT, "web", "vendor")
    if os.path.isdir(vendor):
        shutil.copytree(vendor, os.path.join(folder, "vendor"), dirs_exist_ok=True)
    return folder


def longest(page: Any) -> float:
    """The longest task since the last call, in ms (0 when none passed 50 ms)."""
    tasks = page.evaluate("() => { const t = window.__longtasks; window.__longtasks = [];"
                          " return t; }")
    return round(max(tasks, default=0.0), 1)


def measure(page: Any, base: str, meshid: str, devices: int) -> dict[str, float]:
    group = f"section.group[data-meshid='{meshid}']"
    result: dict[str, float] = {}

    page.goto(base + "/")
    page.wait_for_function(
        "([group, count]) => { const c = document.querySelector(group + ' .counts');"
        " return c && c.textContent.startsWith(count + ' device') &&"
        " document.querySelector(group + ' tr.device'); }",
        arg=[group, devices], polling="raf", timeout=120000)
    result["render_ms"] = round(page.evaluate("performance.now()"), 1)
    page.evaluate(NEXT_FRAME)
    result["render_longest_task_ms"] = longest(page)

    target = f"fleet-{devices // 2:05d}"
    filtered = page.evaluate(
        """async ([group, target]) => {
          const input = document.querySelector('#device-filter');
          const began = performance.now();
          input.value = target;
          input.dispatchEvent(new Event('input', { bubbles: true }));
          input.dispatchEvent(new KeyboardEvent('keydown', { key: 'Enter', bubbles: true }));
          while (document.querySelectorAll(group + ' tr.device').length !== 1)
            if (await frame(began)) return -1;
          await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
          return performance.now() - began;
        }""", [group, target])
    result["filter_ms"] = round(filtered, 1)
    cleared = page.evaluate(
        """async (group) => {
          const input = document.querySelector('#device-filter');
          const began = performance.now();
          input.value = '';
          input.dispatchEvent(new Event('input', { bubbles: true }));
          input.dispatchEvent(new KeyboardEvent('keydown', { key: 'Enter', bubbles: true }));
          while (document.querySelectorAll(group + ' tr.device').length < 2)
            if (await frame(began)) return -1;
          await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
          return performance.now() - began;
        }""", group)
    result["unfilter_ms"] = round(cleared, 1)
    result["filter_longest_task_ms"] = longest(page)

    last = f"fleet-{devices - 1:05d}"
    sort_button = page.query_selector(f"{group} button.sort[data-sort='name']")
    if sort_button is not None:
        sorted_ms = page.evaluate(
            """async ([group, last]) => {
              const began = performance.now();
              document.querySelector(group + " button.sort[data-sort='name']").click();
              while (document.querySelector(group + ' tr.device').dataset.name !== last)
                if (await frame(began)) return -1;
              await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
              return performance.now() - began;
            }""", [group, last])
        result["sort_ms"] = round(sorted_ms, 1)
        page.click(f"{group} button.sort[data-sort='name']")
        page.evaluate(NEXT_FRAME)
        result["sort_longest_task_ms"] = longest(page)

    one = page.evaluate(
        """async (group) => {
          const row = document.querySelector(group + ' tr.device');
          const nodeid = row.dataset.nodeid;
          const meshid = document.querySelector(group).dataset.meshid;
          const began = performance.now();
          meshd.devices.applyEvent({ action: 'nodeconnect', nodeid, meshid, conn: 1, pwr: 1 });
          const selector = `${group} tr.device[data-nodeid="${nodeid}"][data-online="1"]`;
          while (!document.querySelector(selector))
            if (await frame(began)) return -1;
          await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
          return performance.now() - began;
        }""", group)
    result["one_event_ms"] = round(one, 1)
    burst = page.evaluate(
        """async ([group, count]) => {
          const meshid = document.querySelector(group).dataset.meshid;
          const ids = [...meshd.devices.nodes.keys()];
          const began = performance.now();
          // Each event as its own task, as WebSocket frames arrive.
          for (const nodeid of ids)
            setTimeout(() => meshd.devices.applyEvent(
              { action: 'nodeconnect', nodeid, meshid, conn: 1, pwr: 1 }), 0);
          const counts = document.querySelector(group + ' .counts');
          while (!counts.textContent.endsWith(`${count} online`))
            if (await frame(began)) return -1;
          await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
          return performance.now() - began;
        }""", [group, devices])
    result["burst_events_ms"] = round(burst, 1)
    result["events_longest_task_ms"] = longest(page)

    frame = page.evaluate(
        """async () => {
          const steps = 40;
          const height = document.body.scrollHeight - innerHeight;
          let worst = 0;
          for (let i = 1; i <= steps; i += 1) {
            const began = performance.now();
            scrollTo(0, height * i / steps);
            await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
            worst = Math.max(worst, performance.now() - began);
          }
          return worst;
        }""")
    result["scroll_worst_frame_ms"] = round(frame, 1)
    result["scroll_longest_task_ms"] = longest(page)
    result["rows_in_dom"] = page.evaluate(
        "(group) => document.querySelectorAll(group + ' tr.device').length", group)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--web-rev", help="measure web/ of this git revision instead")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from tests.browser import CHROMIUM, FLAGS
    from tests.server import ServerProcess, fresh_datapath
    from tests.test_login import admin
    from tests.test_webapp_browser import fleet_records, import_devices

    if args.web_rev:
        os.environ["MESHD_WEB_DIR"] = web_dir_of(args.web_rev)
    datapath = fresh_datapath()
    created = admin(datapath, "createaccount", "admin", "--pass", PASSWORD, "--siteadmin")
    if created.returncode != 0:
        raise RuntimeError(created.stderr)
    server = ServerProcess(datapath).start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=FLAGS, chromium_sandbox=False)
            context = browser.new_context(ignore_https_errors=True,
                                          viewport={"width": 1280, "height": 800})
            context.add_init_script(LONGTASKS + FRAME)
            page = context.new_page()
            base = f"https://127.0.0.1:{server.port}"
            page.goto(base + "/")
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("#connection[data-state=open]")
            page.fill("#new-group-name", "fleet")
            page.click("#new-group button[type=submit]")
            meshid = page.get_attribute("section.group[data-name='fleet']", "data-meshid")
            if not meshid:
                raise RuntimeError("the group was not created")
            began = time.perf_counter()
            import_devices(datapath, fleet_records(meshid, args.devices))
            print(f"{args.devices} devices written in {time.perf_counter() - began:.1f} s",
                  flush=True)
            runs = [measure(page, base, meshid, args.devices) for _ in range(args.runs)]
            browser.close()
    finally:
        server.stop()
    summary: dict[str, Any] = {"web": args.web_rev or "checkout", "devices": args.devices,
                               "runs": args.runs}
    for key in runs[0]:
        summary[key] = statistics.median(run[key] for run in runs)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
