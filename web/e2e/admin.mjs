// The Admin page in Debian's chromium (playwright-core):
//   node e2e/admin.mjs <api base url> <admin api key> [screenshot dir]
// An admin creates an account on the Admin page and gets its first key (shown once); a second browser
// signs in with that key and has the live channel open; the admin revokes the key; the second
// browser's live channel closes at once and says the key was revoked (it does not retry).
import { launchChromium } from "./browser.mjs";
import { mkdirSync } from "node:fs";

const [base, adminKey, shots = "e2e/screenshots"] = process.argv.slice(2);
mkdirSync(shots, { recursive: true });
const browser = await launchChromium();
let step = "start";
const errors = [];

const answers = []; // the admin browser's API answers, reported when the test fails

async function signIn(context, key) {
  const page = await context.newPage();
  page.on("pageerror", (e) => errors.push(`pageerror: ${e.message}`));
  page.on("response", (r) => { if (r.url().includes("/admin/")) answers.push(`${r.request().method()} ${r.url().replace(base, "")} → ${r.status()} at ${new Date().toISOString().slice(11, 23)}`); });
  await page.goto(`${base}/app/signin/`);
  // The page is live (hydrated, its effects run) once the navigation marks it current: fill after that,
  // or the sign-in form's mount effect would reset the field.
  await page.locator('nav a[aria-current="page"]').waitFor({ timeout: 15000 });
  await page.getByLabel("API key").fill(key);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL("**/app/jobs/");
  await page.locator("[data-live=open]").waitFor({ timeout: 15000 });
  return page;
}

let admin;
try {
  step = "admin signs in";
  admin = await signIn(await browser.newContext(), adminKey);
  admin.on("dialog", (dialog) => dialog.accept());
  await admin.goto(`${base}/app/admin/`);
  await admin.getByRole("table", { name: "Accounts" }).waitFor({ timeout: 15000 });

  step = "create an account with a key";
  const name = `browser-${Date.now().toString(36)}`;
  await admin.getByLabel("Name").fill(name);
  await admin.getByRole("button", { name: "Create with a key" }).click();
  const issued = admin.getByTestId("issued-key");
  await issued.waitFor({ timeout: 15000 });
  const key = (await issued.textContent()).trim();
  if (!key.startsWith("cst_")) throw new Error(`the page showed ${key} as the new key`);
  await admin.getByRole("table", { name: `Keys of ${name}` }).waitFor({ timeout: 15000 });
  await admin.screenshot({ path: `${shots}/admin.png`, fullPage: true });

  step = "the new key signs in elsewhere";
  const user = await signIn(await browser.newContext(), key);

  step = "revoke the key";
  const started = Date.now();
  await admin.getByRole("button", { name: `Revoke key ${key.slice(0, 8)}` }).click();
  await admin.getByRole("cell", { name: /^Revoked/ }).waitFor({ timeout: 15000 });
  await user.locator("[data-live=revoked]").waitFor({ timeout: 5000 });
  const closedAfter = Date.now() - started;
  await user.screenshot({ path: `${shots}/admin-revoked.png` });
  await admin.screenshot({ path: `${shots}/admin-keys.png`, fullPage: true });
  // No page may throw (the hydration error React #418 it once reported is gone: pages render in the browser).
  if (errors.length) throw new Error(`pages threw:\n  ${errors.join("\n  ")}`);
  console.log(`ok: created ${name} with a key on the Admin page; revoking it closed that key's live channel in ${closedAfter} ms`);
} catch (error) {
  console.error(`FAIL (${step}) ${error.message}`);
  // What the admin saw, and what its API calls answered, for the failure's report.
  if (admin) {
    console.error(`the Admin page showed:\n${(await admin.locator("main").innerText().catch(() => "?")).slice(0, 2000)}`);
    await admin.screenshot({ path: `${shots}/admin-failed.png`, fullPage: true }).catch(() => {});
  }
  for (const line of answers) console.error(line);
  process.exitCode = 1;
} finally {
  await browser.close();
}
