// The Jobs page under load, in Debian's chromium (playwright-core): main-thread long tasks (the
// browser's own Long Tasks API, PerformanceObserver "longtask") and frame gaps over two windows of
// the same length — idle (no events), then while the bench publishes events — on one loaded page.
//   node e2e/longtasks.mjs <api base url> <api key> <seconds>
// Protocol with bench/p6_dashboard_long_tasks.py: prints `ready idle` / `ready load` /
// `ready load+scroll` (the table scrolled down meanwhile) on stdout when a window starts and a JSON line with that window's figures when it ends.
import { launchChromium } from "./browser.mjs";

const [base, key, seconds = "10"] = process.argv.slice(2);
const windowMs = Number(seconds) * 1000;
const browser = await launchChromium();
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  await page.addInitScript(() => {
    // Count stream messages as the page receives them (the dashboard's own socket, unchanged).
    const Native = window.WebSocket;
    window.__wsMessages = 0;
    window.WebSocket = class extends Native {
      constructor(...args) {
        super(...args);
        this.addEventListener("message", () => window.__wsMessages++);
      }
    };
  });
  await page.goto(`${base}/app/signin/#key=${key}`);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL("**/app/jobs/");
  await page.locator("tr[data-job-id]").first().waitFor({ timeout: 60000 });
  await page.waitForFunction(() => /of \d+/.test(document.body.innerText), null, { timeout: 60000 });
  const loaded = await page.evaluate(() => document.body.innerText.match(/(\d+) loaded of (\d+)/)?.slice(1).map(Number));

  // The instrument first: a 120 ms busy loop on the main thread must show up as a long task.
  const check = await page.evaluate(async () => {
    const seen = [];
    const observer = new PerformanceObserver((list) => { for (const e of list.getEntries()) seen.push(e.duration); });
    observer.observe({ type: "longtask" });
    setTimeout(() => {
      const start = performance.now();
      while (performance.now() - start < 120) { /* busy, in a task of the page's own */ }
    }, 0);
    await new Promise((resolve) => setTimeout(resolve, 400));
    observer.disconnect();
    return seen;
  });
  console.log(JSON.stringify({ check }));

  for (const phase of ["idle", "load", "load+scroll"]) {
    await page.evaluate(() => {
      window.__longTasks = [];
      window.__loafs = [];
      window.__frames = [];
      window.__startMessages = window.__wsMessages;
      window.__observer?.disconnect();
      window.__observer = new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__longTasks.push(e.duration); });
      window.__observer.observe({ type: "longtask" });
      // Long animation frames (over 50 ms from task start to paint) too: they include rendering work.
      window.__loafObserver?.disconnect();
      window.__loafObserver = new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__loafs.push(e.duration); });
      window.__loafObserver.observe({ type: "long-animation-frame" });
      let last = performance.now();
      const frame = (now) => { window.__frames.push(now - last); last = now; window.__raf = requestAnimationFrame(frame); };
      cancelAnimationFrame(window.__raf);
      window.__raf = requestAnimationFrame(frame);
      window.__progressAtStart = [...document.querySelectorAll("tr[data-job-id] progress")].slice(0, 20).map((p) => p.value);
    });
    console.log(`ready ${phase}`);
    if (phase === "load+scroll") {
      // Scroll the table down steadily, as someone reading it would, loading page after page.
      const scroller = page.getByLabel("Jobs table, scrollable");
      const until = Date.now() + windowMs;
      while (Date.now() < until) {
        await scroller.evaluate((el) => el.scrollBy(0, 1200));
        await page.waitForTimeout(250);
      }
    } else {
      await page.waitForTimeout(windowMs);
    }
    const figures = await page.evaluate(() => {
      const frames = window.__frames.slice(1);
      const progressNow = [...document.querySelectorAll("tr[data-job-id] progress")].slice(0, 20).map((p) => p.value);
      return {
        longTasks: window.__longTasks,
        longAnimationFrames: window.__loafs,
        frames: frames.length,
        worstFrameMs: frames.length ? Math.max(...frames) : null,
        messages: window.__wsMessages - window.__startMessages,
        // Comparable only without scrolling (the same rows on screen at both ends).
        visibleRowsMoved: progressNow.filter((v, i) => v !== window.__progressAtStart[i]).length,
        rowsRendered: document.querySelectorAll("tr[data-job-id]").length,
        rowsLoaded: Number(document.body.innerText.match(/(\d+) loaded of/)?.[1]),
      };
    });
    console.log(JSON.stringify({ phase, loaded, ...figures }));
  }
  await page.screenshot({ path: "e2e/screenshots/jobs-10000.png" });
} finally {
  await browser.close();
}
