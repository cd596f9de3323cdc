"use client";
// Shared building blocks: cards, buttons, state badges, and the loading/empty/error states every page uses.
import { useTheme } from "@emotion/react";
import styled from "@emotion/styled";
import type { ReactNode } from "react";

export const Page = styled.div`
  display: grid;
  gap: 1rem;
`;

export const Title = styled.h1`
  font-size: 1.35rem;
  margin: 0;
`;

export const Card = styled.section`
  background: ${({ theme }) => theme.surface};
  border: 1px solid ${({ theme }) => theme.border};
  border-radius: 8px;
  padding: 0.9rem 1rem;
  min-width: 0;
  h2 {
    font-size: 1rem;
    margin: 0 0 0.5rem;
  }
`;

export const Grid = styled.div<{ min?: string }>`
  display: grid;
  gap: 1rem;
  grid-template-columns: repeat(auto-fill, minmax(${({ min }) => min ?? "16rem"}, 1fr));
`;

export const Button = styled.button<{ variant?: "primary" | "danger" | "plain" }>`
  font: inherit;
  padding: 0.35rem 0.8rem;
  border-radius: 6px;
  cursor: pointer;
  border: 1px solid ${({ theme, variant }) => (variant === "danger" ? theme.danger : variant === "primary" ? theme.accent : theme.border)};
  background: ${({ theme, variant }) => (variant === "primary" ? theme.accent : theme.surface)};
  color: ${({ theme, variant }) => (variant === "primary" ? theme.accentText : variant === "danger" ? theme.danger : theme.text)};
  &:disabled {
    opacity: 0.5;
    cursor: not-allowed;
  }
  &:focus-visible {
    outline: 3px solid ${({ theme }) => theme.accent};
    outline-offset: 2px;
  }
`;

export const Field = styled.p`
  display: grid;
  gap: 0.25rem;
  margin: 0 0 0.75rem;
  label {
    font-weight: 600;
  }
  input,
  select {
    font: inherit;
    padding: 0.3rem 0.4rem;
    border: 1px solid ${({ theme }) => theme.border};
    border-radius: 4px;
    background: ${({ theme }) => theme.surface};
    color: ${({ theme }) => theme.text};
  }
`;

export const ErrorText = styled.span`
  color: ${({ theme }) => theme.danger};
`;

export const Muted = styled.span`
  color: ${({ theme }) => theme.muted};
`;

const BadgeBox = styled.span<{ color: string }>`
  display: inline-block;
  padding: 0.05rem 0.5rem;
  border-radius: 999px;
  font-size: 0.85em;
  border: 1px solid ${({ color }) => color};
  color: ${({ color }) => color};
`;

export function StateBadge({ state, testId }: { state: string; testId?: string }) {
  const theme = useTheme();
  return <BadgeBox color={theme.states[state as keyof typeof theme.states] ?? theme.muted} data-testid={testId}>{state}</BadgeBox>;
}

export const Stat = styled.div`
  display: grid;
  gap: 0.15rem;
  strong {
    font-size: 1.6rem;
  }
`;

export function Loading({ what }: { what: string }) {
  return <p role="status">Loading {what}…</p>;
}

export function Empty({ children }: { children: ReactNode }) {
  return <p>{children}</p>;
}

export function ErrorState({ error }: { error: Error }) {
  return (
    <p role="alert">
      <ErrorText>{error.message}</ErrorText> — is your <a href="/app/signin/">API key</a> set?
    </p>
  );
}

export function Progress({ value, label }: { value: number; label: string }) {
  return <progress max={1} value={value} aria-label={label} style={{ width: "7rem" }} />;
}

export function formatSeconds(seconds: number | null | undefined): string {
  if (seconds == null || !Number.isFinite(seconds)) return "–";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}
