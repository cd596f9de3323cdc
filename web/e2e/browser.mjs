// Debian's chromium driven by playwright-core (browser downloads fail here): the one place that
// knows the binary and the flags the browser tests and benches run it with.
import { chromium } from "playwright-core";

export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
}
