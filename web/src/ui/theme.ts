// One Emotion theme in two modes. Colours are chosen for contrast on both backgrounds.
import type { Theme as EmotionTheme } from "@emotion/react";
import type { JobState } from "../lib/vocabulary";

export type Mode = "light" | "dark";

export interface Palette {
  mode: Mode;
  bg: string;
  surface: string;
  border: string;
  text: string;
  muted: string;
  accent: string;
  accentText: string;
  danger: string;
  states: Record<JobState, string>;
  chart: string[];
  map: { background: string; land: string; border: string; fill: string; outline: string; area: string };
}

const light: Palette = {
  mode: "light",
  bg: "#f6f7f9",
  surface: "#ffffff",
  border: "#d5d9e0",
  text: "#17202c",
  muted: "#5b6473",
  accent: "#2457c5",
  accentText: "#ffffff",
  danger: "#b3261e",
  states: { queued: "#6b7280", running: "#2457c5", succeeded: "#18794e", failed: "#b3261e", canceled: "#8a5a00" },
  chart: ["#2457c5", "#c2410c", "#18794e", "#7c3aed"],
  map: { background: "#dbe6f0", land: "#f4f1ea", border: "#b9b3a6", fill: "#2457c5", outline: "#17202c", area: "#c2410c" },
};

const dark: Palette = {
  mode: "dark",
  bg: "#0f141b",
  surface: "#18202b",
  border: "#2c3747",
  text: "#e6eaf0",
  muted: "#9aa4b2",
  accent: "#7aa7ff",
  accentText: "#0f141b",
  danger: "#ff8a80",
  states: { queued: "#9aa4b2", running: "#7aa7ff", succeeded: "#4cc38a", failed: "#ff8a80", canceled: "#f0b54a" },
  chart: ["#7aa7ff", "#ff9d5c", "#4cc38a", "#c4a5ff"],
  map: { background: "#121a24", land: "#263242", border: "#3d4b5e", fill: "#7aa7ff", outline: "#e6eaf0", area: "#ff9d5c" },
};

export const palettes: Record<Mode, Palette> = { light, dark };

declare module "@emotion/react" {
  // eslint-disable-next-line @typescript-eslint/no-empty-object-type
  export interface Theme extends Palette {}
}

export type Theme = EmotionTheme;
