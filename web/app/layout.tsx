import type { ReactNode } from "react";
import { Providers } from "./providers";

export const metadata = { title: "Constellation" };

const nav = { display: "flex", gap: "1rem", padding: "0.75rem 1rem", borderBottom: "1px solid #ccd" } as const;

export default function RootLayout({ children }: { children: ReactNode }) {
  return (
    <html lang="en">
      <body style={{ fontFamily: "system-ui, sans-serif", margin: 0 }}>
        <nav aria-label="Main" style={nav}>
          <strong>Constellation</strong>
          <a href="/app/jobs/">Jobs</a>
          <a href="/app/submit/">Submit</a>
          <a href="/app/gpus/">GPUs</a>
          <a href="/app/signin/">API key</a>
        </nav>
        <main style={{ padding: "1rem" }}>
          <Providers>{children}</Providers>
        </main>
      </body>
    </html>
  );
}
