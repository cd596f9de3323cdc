// Drive the dashboard in Debian's chromium (playwright-core, no browser download):
//   node e2e/smoke.mjs <api base url> <api key> <geojson file> [screenshot dir] [id of a long job]
// Signs in, uploads an area on Submit, follows the job to `succeeded` on Jobs, checks a bad area
// shows the API's reason next to the field, and saves a screenshot of each page. Given the id of a
// long job, it also waits for it to run with a moving progress bar and cancels it from the Jobs page.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const [base, key, areaFile, shots = "e2e/screenshots", longJob] = process.argv.slice(2);
mkdirSync(shots, { recursive: true });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const fail = (message) => { console.error(`FAIL ${message}`); process.exitCode = 1; };
try {
  const page = await browser.newPage();
  await page.goto(`${base}/app/signin/?key=${key}`);
  await page.screenshot({ path: `${shots}/signin.png` });
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL("**/app/jobs/");

  if (longJob) {
    // First, while it still runs (a long job lasts seconds here): it runs, its progress bar moves, and Cancel on the Jobs page ends it `canceled`.
    await page.goto(`${base}/app/jobs/`);
    const running = page.locator(`tr[data-job-id="${longJob}"][data-state="running"]`);
    await running.waitFor({ timeout: 120000 });
    const bar = running.locator("progress");
    const first = Number(await bar.getAttribute("value"));
    await page.waitForFunction(
      ([id, before]) => Number(document.querySelector(`tr[data-job-id="${id}"] progress`)?.getAttribute("value")) > before,
      [longJob, first], { timeout: 60000 },
    );
    await page.screenshot({ path: `${shots}/jobs-running.png` });
    await running.getByRole("button", { name: "Cancel" }).click();
    await page.locator(`tr[data-job-id="${longJob}"][data-state="canceled"]`).waitFor({ timeout: 30000 });
    await page.screenshot({ path: `${shots}/jobs-canceled.png` });
    console.log(`ok: job ${longJob} ran with a moving progress bar and was canceled from the Jobs page`);
  }

  await page.goto(`${base}/app/submit/`);
  await page.getByLabel("Name").fill("from the browser");
  await page.getByLabel("Area (GeoJSON file)").setInputFiles(areaFile);
  await page.getByLabel("Zoom").fill("14");
  await page.getByLabel("Mode").selectOption("serial");
  await page.getByRole("button", { name: "Submit" }).click();
  const link = page.getByRole("status").getByRole("link");
  await link.waitFor({ timeout: 15000 });
  const jobId = (await link.textContent()).trim();
  await page.screenshot({ path: `${shots}/submit.png` });

  await page.goto(`${base}/app/jobs/`);
  const row = page.locator(`tr[data-job-id="${jobId}"]`);
  await row.waitFor({ timeout: 15000 });
  await page.locator(`tr[data-job-id="${jobId}"][data-state="succeeded"]`).waitFor({ timeout: 180000 });
  await page.screenshot({ path: `${shots}/jobs.png` });

  await page.goto(`${base}/app/jobs/detail/?id=${jobId}`);
  await page.getByTestId("state").filter({ hasText: "succeeded" }).waitFor({ timeout: 15000 });
  await page.screenshot({ path: `${shots}/job.png` });

  await page.goto(`${base}/app/gpus/`);
  await page.getByRole("region", { name: "Devices" }).waitFor({ timeout: 15000 });
  await page.screenshot({ path: `${shots}/gpus.png` });

  // A bad area: the API's reason appears next to the field.
  await page.goto(`${base}/app/submit/`);
  await page.getByLabel("Area (GeoJSON file)").setInputFiles({
    name: "point.geojson", mimeType: "application/geo+json",
    buffer: Buffer.from(JSON.stringify({ type: "Point", coordinates: [6.1, 46.2] })),
  });
  await page.getByRole("button", { name: "Submit" }).click();
  const error = page.locator("#area-error");
  await error.waitFor({ timeout: 15000 });
  if (!(await error.textContent()).includes("Polygon")) fail(`unexpected area error: ${await error.textContent()}`);
  await page.screenshot({ path: `${shots}/submit-error.png` });
  console.log(`ok: job ${jobId} submitted from the browser and seen succeeded; screenshots in ${shots}`);
} catch (error) {
  fail(error.stack ?? String(error));
} finally {
  await browser.close();
}
