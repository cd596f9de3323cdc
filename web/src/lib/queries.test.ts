import { describe, expect, it } from "vitest";
import { ApiError, shouldRetry } from "./queries";

describe("shouldRetry", () => {
  it("asks again after network and server errors, a few times", () => {
    expect(shouldRetry(0, new TypeError("Failed to fetch"))).toBe(true);
    expect(shouldRetry(1, new ApiError("unavailable", 503))).toBe(true);
    expect(shouldRetry(3, new ApiError("unavailable", 503))).toBe(false);
  });

  it("never repeats a request the API refused (4xx): the answer would not change", () => {
    expect(shouldRetry(0, new ApiError("no job with id …", 404))).toBe(false);
    expect(shouldRetry(0, new ApiError("Missing, unknown or revoked API key", 401))).toBe(false);
  });
});
