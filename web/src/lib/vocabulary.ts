// The job vocabulary, from the generated contract types: a state or event type added to or removed
// from the API's contract makes these Records incomplete or wrong, and the typecheck fails here.
import type { components } from "../api/schema";

export type JobState = components["schemas"]["JobPublic"]["state"];
export type EventType = components["schemas"]["Event"]["type"];

const TERMINAL: Record<JobState, boolean> = { queued: false, running: false, succeeded: true, failed: true, canceled: true };
const IN_LOG: Record<EventType, boolean> = { "job.state": true, "job.log": true, "job.progress": false, "gpu.metrics": false };

/** Every job state, in lifecycle order. */
export const JOB_STATES = Object.keys(TERMINAL) as JobState[];
/** States a job never leaves. */
export const TERMINAL_STATES: ReadonlySet<string> = new Set(JOB_STATES.filter((s) => TERMINAL[s]));
/** The event types a job's log shows (its lines and its states). */
export const LOG_EVENT_TYPES: ReadonlySet<string> = new Set((Object.keys(IN_LOG) as EventType[]).filter((t) => IN_LOG[t]));
